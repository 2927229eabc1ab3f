"""Notebook parameters and plots that work the same on Databricks and anywhere else.

On Databricks a parameter is a text widget (``dbutils.widgets``): it shows above the notebook and a
job run can set it. Elsewhere (Jupyter, a headless test) it is the default, unless the environment
variable ``SHARDLAKE_NB_<NAME>`` is set: that is how a test passes parameters to a notebook.
dbutils is only looked up on Databricks; nothing here imports it otherwise.
"""
from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

ENV_PREFIX = "SHARDLAKE_NB_"


def on_databricks() -> bool:
    """True inside a Databricks runtime (which sets DATABRICKS_RUNTIME_VERSION)."""
    return "DATABRICKS_RUNTIME_VERSION" in os.environ


def _dbutils() -> Any:
    """The notebook's dbutils: the global Databricks puts into the notebook, else built from Spark."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None and "dbutils" in shell.user_ns:
            return shell.user_ns["dbutils"]
    except ImportError:
        pass
    from pyspark.dbutils import DBUtils  # only exists on Databricks
    from pyspark.sql import SparkSession

    return DBUtils(SparkSession.builder.getOrCreate())


def param(name: str, default: str, label: str | None = None) -> str:
    """A text parameter: a Databricks widget there, else $SHARDLAKE_NB_<NAME> or ``default``."""
    if on_databricks():
        widgets = _dbutils().widgets
        widgets.text(name, default, label or name)
        return widgets.get(name)
    return os.environ.get(ENV_PREFIX + name.upper(), default)


def param_list(name: str, default: str = "", label: str | None = None) -> list[str]:
    """A parameter holding several values separated by spaces (shell quoting), e.g. config overrides."""
    return shlex.split(param(name, default, label))


def default_conf() -> str:
    """conf/base.yaml of the checkout the jobs were installed from (what the jobs use by default)."""
    from jobs.common import DEFAULT_CONF

    return str(DEFAULT_CONF)


def load_config(conf: Sequence[str] | None = None, overrides: Sequence[str] | None = None):
    """The run configuration from the ``conf`` and ``overrides`` parameters (or the given values)."""
    from shardlake.config import load_config as load

    files = list(conf) if conf is not None else param_list("conf", default_conf(), "config files")
    extra = list(overrides) if overrides is not None else param_list("overrides", "", "key=value overrides")
    return load(files, extra)


def spark_session(config):
    """The notebook's Spark session: Databricks' own there, else a local one with Delta (shardlake.session)."""
    if on_databricks():
        from pyspark.sql import SparkSession

        return SparkSession.builder.getOrCreate()
    from shardlake.session import build_session

    # Spark's Python workers (and Horovod's ranks) must run this kernel's interpreter, which has
    # the project's packages; the default `python3` on PATH may not.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = build_session(config.spark.master, f"{config.spark.app_name}-notebook", config.spark.settings)
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def show(fig) -> None:
    """Draw a matplotlib figure into the notebook as a PNG, then close it.

    The PNG is rendered here, so it shows with any backend (Agg included, where IPython alone would
    print only the figure's repr) in Jupyter, a headless run and Databricks alike.
    """
    import io

    import matplotlib.pyplot as plt
    from IPython.display import Image, display

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    display(Image(data=buffer.getvalue(), format="png"))
