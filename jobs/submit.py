"""``shardlake-submit``: spark-submit with what a shardlake job needs, and no environment set by hand.

pip's ``spark-submit`` finds Spark through the first ``python3`` on PATH and starts the driver and
workers with it, so outside an activated venv it fails (``/bin/spark-class: No such file``) or
runs a Python without the stack; and under spark-submit the driver JVM is already running when a
job's session builder would add the Delta jars. This launcher sets ``SPARK_HOME`` to the
installed pyspark, the driver's and workers' Python to this interpreter (unless the user chose
one) and ``--jars`` to the cached Delta jars, then hands every argument to spark-submit as it is.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from shardlake.session import default_jar_cache, delta_jars, openlineage_jar


def submit_command(argv: list[str], environ: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The spark-submit command line and environment for ``argv`` (the user's spark-submit arguments)."""
    import pyspark

    spark_home = environ.get("SPARK_HOME") or str(Path(pyspark.__file__).resolve().parent)
    env = {**environ, "SPARK_HOME": spark_home}
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", env["PYSPARK_PYTHON"])
    env.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    jars = delta_jars(default_jar_cache())
    listener = openlineage_jar(default_jar_cache())  # lineage's listener must be on the driver's class path too
    jars += [listener] if jars and listener else []
    extra = ["--jars", ",".join(str(j) for j in jars)] if jars and "--jars" not in argv else []
    return [str(Path(spark_home) / "bin" / "spark-submit"), *extra, *argv], env


def main(argv: list[str] | None = None) -> int:
    """Replace this process by spark-submit with ``argv``."""
    command, env = submit_command(list(sys.argv[1:] if argv is None else argv), dict(os.environ))
    os.execve(command[0], command, env)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
