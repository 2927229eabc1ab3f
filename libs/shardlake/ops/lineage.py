"""OpenLineage events of the jobs: the Spark listener's settings, and the events the jobs emit themselves.

OpenLineage's Spark listener (``spark_settings``) sees what Spark SQL writes: the Delta tables with
their schema, column lineage and row counts. It does not see what Spark never reads as a dataset:
the source files and join sources (parsed by the driver and staged to a temporary folder, which is
what the listener names as their input), the model (trained by Petastorm and Horovod outside Spark
SQL) and which table version a model was trained on. So every job also emits one run of its own
(``JobRun``): START, then COMPLETE with those inputs and outputs, or FAIL. Datasets are named as the
listener names them (OpenLineage's naming for files: ``file`` or the URL's scheme and authority as
the namespace, the path as the name), so both kinds of event meet on the same datasets.

Emitting is best effort: a backend that cannot be reached costs one warning line, never the job.
Credentials never enter an event: datasets are named by location only, and an HTTP backend's API
key comes from the environment (``LineageSettings.api_key_env``).
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.generated.dataset_version_dataset import DatasetVersionDatasetFacet
from openlineage.client.generated.error_message_run import ErrorMessageRunFacet
from openlineage.client.generated.job_type_job import JobTypeJobFacet
from openlineage.client.generated.parent_run import ParentRunFacet, Root, RootJob, RootRun
from openlineage.client.generated.parent_run import Job as ParentJob
from openlineage.client.generated.parent_run import Run as ParentRun
from openlineage.client.transport.console import ConsoleConfig, ConsoleTransport
from openlineage.client.transport.file import FileConfig, FileTransport
from openlineage.client.transport.http import ApiKeyTokenProvider, HttpConfig, HttpTransport
from openlineage.client.uuid import generate_new_uuid

from shardlake.config import LineageSettings
from shardlake.storage import is_url

log = logging.getLogger("shardlake.lineage")

LISTENER = "io.openlineage.spark.agent.OpenLineageSparkListener"
SPARK_EVENTS = "spark.jsonl"  # file transport: the listener's events, one JSON per line
JOB_EVENTS = "jobs.jsonl"     # file transport: the jobs' own events
# What Airflow's OpenLineage provider injects into a SparkSubmitOperator's conf (spark_inject_parent_job_info).
PARENT_KEYS = ("parentJobNamespace", "parentJobName", "parentRunId",
               "rootParentJobNamespace", "rootParentJobName", "rootParentRunId")
# Spark hides the values of matching settings in its UI, logs and event log; the default plus the API key.
REDACTION_REGEX = r"(?i)secret|password|token|access[.]key|apikey"
PRODUCER = "https://github.com/shardlake/shardlake/tree/main/libs/shardlake/ops/lineage.py"


def events_folder(settings: LineageSettings, lake_root: str) -> Path:
    """The folder of the file transport: the configured one, else the lake root's ``_lineage/`` for a local
    lake, else a local state folder (an object store has no append for the listener's file)."""
    if settings.location:
        return Path(settings.location).expanduser()
    if not is_url(lake_root):
        return Path(lake_root) / "_lineage"
    state = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state) / "shardlake" / "lineage"


def spark_settings(settings: LineageSettings, lake_root: str) -> dict[str, str]:
    """Spark settings that attach OpenLineage's listener with the configured transport (none when disabled).

    The parent run is not set here: under Airflow, SparkSubmitOperator injects ``spark.openlineage.parent*``
    into the submitted conf, which the listener and ``JobRun`` both read from there."""
    if not settings.enabled:
        return {}
    conf = {"spark.extraListeners": LISTENER, "spark.openlineage.namespace": settings.namespace,
            "spark.openlineage.transport.type": settings.transport}
    if settings.transport == "file":
        folder = events_folder(settings, lake_root)
        folder.mkdir(parents=True, exist_ok=True)
        conf["spark.openlineage.transport.location"] = str(folder / SPARK_EVENTS)
    elif settings.transport == "http":
        conf.update({"spark.openlineage.transport.url": str(settings.url),
                     "spark.openlineage.transport.endpoint": settings.endpoint})
        key = os.environ.get(settings.api_key_env)
        if key:  # only in the JVM's conf, which Spark redacts by this pattern wherever it shows settings
            conf.update({"spark.openlineage.transport.auth.type": "api_key",
                         "spark.openlineage.transport.auth.apiKey": key, "spark.redaction.regex": REDACTION_REGEX})
    return conf


def client_for(settings: LineageSettings, lake_root: str) -> OpenLineageClient:
    """An OpenLineage client with the same transport the listener gets."""
    if settings.transport == "file":
        folder = events_folder(settings, lake_root)
        folder.mkdir(parents=True, exist_ok=True)
        transport = FileTransport(FileConfig(log_file_path=str(folder / JOB_EVENTS), append=True))
    elif settings.transport == "http":
        key = os.environ.get(settings.api_key_env)
        auth = ApiKeyTokenProvider({"apiKey": key}) if key else ApiKeyTokenProvider({})
        transport = HttpTransport(HttpConfig(url=str(settings.url), endpoint=settings.endpoint, auth=auth))
    else:
        transport = ConsoleTransport(ConsoleConfig())
    return OpenLineageClient(transport=transport)


def dataset_id(location: str | os.PathLike) -> tuple[str, str]:
    """(namespace, name) of a file or table location, as OpenLineage's Spark listener names it: ``file`` and
    the absolute path for a local one; the URL's scheme and authority, then the path, for a store's
    (``s3a://bucket`` + ``key/of/table``; ``hdfs://host:port`` + ``/path``). No credentials: a URL's user
    info is dropped."""
    text = str(location)
    split = urllib.parse.urlsplit(text)
    if not split.scheme or split.scheme == "file" or len(split.scheme) == 1:  # a path (or C:\ on Windows)
        path = split.path if split.scheme == "file" else text
        return "file", str(Path(path).resolve())
    authority = split.hostname or ""
    if split.port:
        authority += f":{split.port}"
    namespace = f"{split.scheme}://{authority}"
    path = split.path.rstrip("/") or "/"
    return namespace, path.lstrip("/") if split.scheme in ("s3", "s3a", "s3n", "gs", "abfs", "abfss") else path


def _facets(version: int | str | None) -> dict:
    return {} if version is None else {"version": DatasetVersionDatasetFacet(datasetVersion=str(version))}


def input_of(location: str | os.PathLike, version: int | str | None = None) -> InputDataset:
    """An input dataset; ``version``: the Delta table version read (or a model version)."""
    namespace, name = dataset_id(location)
    return InputDataset(namespace=namespace, name=name, facets=_facets(version))


def output_of(location: str | os.PathLike, version: int | str | None = None) -> OutputDataset:
    """An output dataset; ``version``: the Delta table version written (or a model version)."""
    namespace, name = dataset_id(location)
    return OutputDataset(namespace=namespace, name=name, facets=_facets(version))


def parent_facet(conf: Mapping[str, str]) -> ParentRunFacet | None:
    """The parent run a scheduler handed this job (``spark.openlineage.parent*``, as Airflow's provider
    injects them), or None."""
    got = {key: conf.get(f"spark.openlineage.{key}") for key in PARENT_KEYS}
    if not all(got[key] for key in PARENT_KEYS[:3]):
        return None
    root = None
    if all(got[key] for key in PARENT_KEYS[3:]):
        root = Root(run=RootRun(runId=got["rootParentRunId"]),
                    job=RootJob(namespace=got["rootParentJobNamespace"], name=got["rootParentJobName"]))
    return ParentRunFacet(run=ParentRun(runId=got["parentRunId"]),
                          job=ParentJob(namespace=got["parentJobNamespace"], name=got["parentJobName"]), root=root)


class JobRun:
    """One run of a job as OpenLineage sees it: ``start`` emits START, ``complete`` or ``fail`` the end."""

    def __init__(self, client: OpenLineageClient | None, namespace: str, name: str,
                 parent: ParentRunFacet | None = None):
        self.client, self.namespace, self.name = client, namespace, name
        self.run_id = str(generate_new_uuid())
        self.parent = parent

    @classmethod
    def begin(cls, spark, settings: LineageSettings, lake_root: str, name: str,
              inputs: Iterable[InputDataset] = ()) -> "JobRun":
        """Emit this job's START (nothing when lineage is off); the parent run comes from the session's conf."""
        if not settings.enabled:
            return cls(None, settings.namespace, name)
        try:
            client = client_for(settings, lake_root)
            conf = dict(spark.sparkContext.getConf().getAll()) if spark is not None else {}
        except Exception as err:  # noqa: BLE001 - lineage must never stop a job
            log.warning("lineage: no events for %s (%s: %s)", name, type(err).__name__, err)
            return cls(None, settings.namespace, name)
        run = cls(client, settings.namespace, name, parent_facet(conf))
        run._emit(RunState.START, list(inputs), [])
        return run

    def complete(self, datasets: Callable[[], tuple[Iterable[InputDataset], Iterable[OutputDataset]]]) -> None:
        """Emit COMPLETE with what the job read and wrote: ``datasets()`` (called only when lineage is on; a
        failure there, such as a source gone since, is a warning and an event without datasets)."""
        if self.client is None:
            return
        try:
            inputs, outputs = datasets()
        except Exception as err:  # noqa: BLE001 - lineage must never stop a job
            log.warning("lineage: datasets of %s not named (%s: %s)", self.name, type(err).__name__, err)
            inputs, outputs = [], []
        self._emit(RunState.COMPLETE, list(inputs), list(outputs))

    def fail(self, error: BaseException | str) -> None:
        """Emit FAIL with the error's message (one line, no traceback)."""
        message = str(error).splitlines()[0][:500] if str(error) else type(error).__name__
        self._emit(RunState.FAIL, [], [], {"errorMessage": ErrorMessageRunFacet(
            message=message, programmingLanguage="python")})

    def _emit(self, state: RunState, inputs: list, outputs: list, facets: dict | None = None) -> None:
        if self.client is None:
            return
        run_facets = {**({"parent": self.parent} if self.parent else {}), **(facets or {})}
        event = RunEvent(
            eventType=state, eventTime=dt.datetime.now(dt.timezone.utc).isoformat(), producer=PRODUCER,
            run=Run(runId=self.run_id, facets=run_facets),
            job=Job(namespace=self.namespace, name=self.name, facets={"jobType": JobTypeJobFacet(
                processingType="BATCH", integration="SHARDLAKE", jobType="JOB")}),
            inputs=inputs, outputs=outputs)
        try:
            self.client.emit(event)
        except Exception as err:  # noqa: BLE001 - an unreachable backend is a warning, never a failed job
            log.warning("lineage: %s event of %s not sent (%s: %s)", state.value, self.name, type(err).__name__, err)


def ingest_datasets(lake, spec, base_dir: Path, interval, report) -> tuple[list[InputDataset], list[OutputDataset]]:
    """What an ingest read (every source file and join source file of its ``interval``) and wrote (the
    clean and quarantine tables at the versions it left them)."""
    from shardlake.sources import resolve_files
    from shardlake.stages.ingest import for_interval

    spec = for_interval(spec, interval)
    sources = [spec.source.path, *[join.source.path for join in spec.joins]]
    inputs = [input_of(file) for path in sources for file in resolve_files(path, base_dir)]
    outputs = [output_of(lake.table(spec.name, "clean"), report.table_version),
               output_of(lake.table(spec.name, "quarantine"), report.quarantine_version)]
    return inputs, outputs


def training_datasets(lake, dataset: str, card: Mapping) -> tuple[list[InputDataset], list[OutputDataset]]:
    """What a training read (the clean table at the version its card records) and wrote (the model
    version's folder, with the model version as the dataset's version)."""
    model = output_of(lake.model_location(dataset, card["model_version"]), card["model_version"])
    return [input_of(card["table_path"], card["table_version"])], [model]


def inference_datasets(lake, dataset: str, report) -> tuple[list[InputDataset], list[OutputDataset]]:
    """What an inference read (the clean table version and the model) and wrote (predictions, summary)."""
    from shardlake.quantize import QUANTIZED_SUFFIX

    model_version = report.model_version.removesuffix(QUANTIZED_SUFFIX)  # the int8 variant is of this model
    inputs = [input_of(report.source_table, report.source_version),
              input_of(lake.model_location(dataset, model_version), model_version)]
    outputs = [output_of(lake.table(dataset, "predictions"), report.predictions_version),
               output_of(lake.table(dataset, "inference_summary"))]
    return inputs, outputs
