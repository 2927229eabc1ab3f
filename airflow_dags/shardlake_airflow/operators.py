"""SparkSubmitOperator for one shardlake job, with the DAG run's configuration files and overrides."""
from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow.exceptions import AirflowException, AirflowFailException
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

# SparkSubmitOperator.execute without Airflow's ExecutorSafeguard wrapper. The wrapper only knows
# calls made by the TaskInstance, and logs a false "execute cannot be called outside TaskInstance!"
# for a subclass's super().execute(); our execute is itself called by the TaskInstance.
_SUBMIT = getattr(SparkSubmitOperator.execute, "__wrapped__", SparkSubmitOperator.execute)


def run_args(params: Mapping[str, Any], home: str) -> list[str]:
    """The arguments every job of a run shares: ``--conf`` per file, ``dataset=NAME``, the overrides.

    Relative configuration files resolve against the project folder, like `make demo` does.
    ``dataset=NAME`` comes before the overrides, so an override can still reach into the dataset.
    """
    args: list[str] = []
    for path in params["conf"]:
        args += ["--conf", str(Path(home, path))]
    return [*args, f"dataset={params['dataset']}", *params["overrides"]]


class ShardlakeJobOperator(SparkSubmitOperator):
    """spark-submit ``jobs/<job>.py`` of the project with the run's ``--conf`` files and overrides.

    ``job_args`` (templated) are the job's own options; the DAG run's params add the arguments of
    :func:`run_args`, each rendered too, so an override may use ``{{ ds }}``. Arguments that render
    to an empty string are dropped, which lets a template make an option conditional.

    spark-submit runs in the project folder, so a relative ``lake.root`` (conf/base.yaml: ./lake)
    is the same folder as under `make demo`, whichever folder the Airflow worker started in.

    The job writes its result as JSON (``--result-file``); the task returns it, so it is the task's
    XCom ``return_value`` and later tasks template from it (the table version an ingest produced,
    the model a gate left in production).

    ``refused_exit_code``: the job's exit code for a deliberate refusal (the promotion gate not
    promoting its candidate). With a result, a refusal is an answer, not a failure: the task
    succeeds and returns it (a warning says so), and the interval is scored with the model that
    stays in production. Without one (nothing to judge) it is final: AirflowFailException, which
    Airflow does not retry, since a retry would refuse again.
    """

    template_fields: Sequence[str] = (*SparkSubmitOperator.template_fields, "job_args")

    def __init__(self, *, job: str, home: str, job_args: Sequence[str] = (),
                 refused_exit_code: int | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("name", f"shardlake-{job}")
        super().__init__(application=str(Path(home, "jobs", f"{job}.py")), **kwargs)
        self.job = job
        self.home = str(home)
        self.job_args = list(job_args)
        self.refused_exit_code = refused_exit_code

    def render_template_fields(self, context, jinja_env=None) -> None:
        """Render the fields, then build application_args from job_args and the run's params.

        Rebuilt from scratch on every call, so rendering twice does not repeat arguments.
        """
        super().render_template_fields(context, jinja_env)
        shared = self.render_template(run_args(context["params"], self.home), context, jinja_env)
        self.application_args = [str(a) for a in [*self.job_args, *shared] if str(a) != ""]

    def execute(self, context) -> dict | None:
        """spark-submit from the project folder; the job's result (the XCom), or a final failure on a refusal
        without one."""
        with tempfile.TemporaryDirectory(prefix=f"shardlake-{self.job}-") as folder, contextlib.chdir(self.home):
            result = Path(folder, "result.json")
            self.application_args = [f"--result-file={result}", *self.application_args]
            try:
                _SUBMIT(self, context)
            except AirflowException as err:
                code = self._exit_code()
                if self.refused_exit_code is None or code != self.refused_exit_code:
                    raise
                if not result.is_file():
                    raise AirflowFailException(
                        f"jobs/{self.job}.py refused (exit code {code}); not retried: {err}") from err
                answer = json.loads(result.read_text(encoding="utf-8"))
                self.log.warning("jobs/%s.py refused (exit code %s): %s", self.job, code, answer.get("reason", answer))
                return answer
            return json.loads(result.read_text(encoding="utf-8")) if result.is_file() else None

    def _exit_code(self) -> int | None:
        """Exit code of the spark-submit process this task ran, if one ran."""
        process = getattr(self._hook, "_submit_sp", None)
        return process.returncode if process is not None else None
