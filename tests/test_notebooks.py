"""The Databricks source-format notebooks run headless, top to bottom, on a small sample lake.

Each notebook is converted (Databricks source -> jupytext's percent format -> a notebook) and
executed by nbclient in a real kernel of the project venv; an error in any cell fails its test.
Parameters go in through SHARDLAKE_NB_<NAME> environment variables, the fallback of
shardlake.notebook off Databricks. The lake is the one the Airflow DAG run wrote (conftest.py's
airflow_pipeline_run, shared with tests/test_airflow.py), or, where Airflow cannot be installed,
one written by the jobs in this process.
"""
from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from shardlake import notebook as nb

NEEDS = "the notebook tests need jupytext, nbclient, nbformat and ipykernel (requirements-dev.txt)"
jupytext = pytest.importorskip("jupytext", reason=NEEDS)
nbformat = pytest.importorskip("nbformat", reason=NEEDS)
NotebookClient = pytest.importorskip("nbclient", reason=NEEDS).NotebookClient
pytest.importorskip("ipykernel", reason=NEEDS)

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.py"))
HEADER = "# Databricks notebook source"
SEPARATOR = "# COMMAND ----------"
# Figures each notebook must draw (image/png outputs), at least.
FIGURES = {"01_explore_dataset": 6, "02_train_and_compare": 2, "03_inspect_predictions": 3}


def databricks_to_percent(text: str) -> str:
    """Databricks source format -> jupytext percent format.

    ``# COMMAND ----------`` separates cells; a cell of ``# MAGIC %md`` lines is markdown. Other
    magics (%sql, %sh, %run, %pip) have no local equivalent here and are refused.
    """
    lines = text.splitlines()
    if not lines or lines[0].strip() != HEADER:
        raise ValueError(f"not a Databricks source notebook: the first line must be {HEADER!r}")
    cells, current = [], []
    for line in lines[1:]:
        if line.strip() == SEPARATOR:
            cells.append(current)
            current = []
        else:
            current.append(line)
    cells.append(current)
    out = []
    for cell in cells:
        body = "\n".join(cell).strip("\n")
        if not body:
            continue
        if body.startswith("# MAGIC"):
            magic = [re.sub(r"^# MAGIC ?", "", line) for line in body.splitlines()]
            if not magic[0].startswith("%md"):
                raise ValueError(f"unsupported magic cell {magic[0]!r}: only %md runs outside Databricks")
            markdown = [magic[0][3:].strip(), *magic[1:]] if magic[0][3:].strip() else magic[1:]
            out.append("# %% [markdown]\n" + "\n".join(f"# {m}" if m else "#" for m in markdown))
        else:
            out.append("# %%\n" + body)
    return "\n\n".join(out) + "\n"


def to_notebook(path: Path) -> nbformat.NotebookNode:
    notebook = jupytext.reads(databricks_to_percent(path.read_text(encoding="utf-8")), fmt="py:percent")
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return notebook


def figures(notebook: nbformat.NotebookNode) -> int:
    """image/png outputs of the executed notebook: the plots it drew."""
    return sum("image/png" in output.get("data", {})
               for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", []))


def test_conversion_keeps_code_and_markdown_cells():
    text = f"{HEADER}\n# MAGIC %md\n# MAGIC # Title\n# MAGIC\n# MAGIC text\n\n{SEPARATOR}\n\nx = 1\n\n{SEPARATOR}\n\nprint(x)\n"
    notebook = jupytext.reads(databricks_to_percent(text), fmt="py:percent")
    assert [(c.cell_type, c.source) for c in notebook.cells] == [
        ("markdown", "# Title\n\ntext"), ("code", "x = 1"), ("code", "print(x)")]
    with pytest.raises(ValueError, match="unsupported magic"):
        databricks_to_percent(f"{HEADER}\n# MAGIC %sql\n# MAGIC SELECT 1\n")


def test_the_notebook_folder_holds_exactly_the_notebooks_with_expected_figures():
    # The parametrized tests below run once per file the glob found: with none, they would not run at all.
    assert [p.stem for p in NOTEBOOKS] == sorted(FIGURES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_are_databricks_source_that_import_the_installed_package(path):
    text = path.read_text(encoding="utf-8")
    assert text.startswith(HEADER + "\n")
    assert SEPARATOR in text and "# MAGIC %md" in text
    assert "sys.path" not in text and "dbutils" not in text
    assert "from shardlake import notebook as nb" in text
    assert path.stem in FIGURES


def test_parameters_fall_back_to_defaults_and_the_environment_off_databricks(monkeypatch):
    monkeypatch.delenv("DATABRICKS_RUNTIME_VERSION", raising=False)
    monkeypatch.delenv("SHARDLAKE_NB_SAMPLE_ROWS", raising=False)
    assert not nb.on_databricks()
    assert nb.param("sample_rows", "100") == "100"
    monkeypatch.setenv("SHARDLAKE_NB_SAMPLE_ROWS", "7")
    assert nb.param("sample_rows", "100") == "7"
    monkeypatch.setenv("SHARDLAKE_NB_OVERRIDES", "lake.root='/tmp/a lake' train.hidden=[8,4]")
    assert nb.param_list("overrides") == ["lake.root=/tmp/a lake", "train.hidden=[8,4]"]
    assert "pyspark.dbutils" not in sys.modules


def build_lake_in_process(root: Path) -> list[str]:
    """ingest -> train (promote) -> infer through the jobs' entry points, as the DAG would: the overrides."""
    from flights_sample import write_sample
    from jobs import infer, ingest, train

    sample, _ = write_sample(root / "data", every=100)
    overrides = [f"lake.root={root / 'lake'}", f"dataset.source.path={sample}", "dataset.shards=4",
                 "train.epochs=1", "train.promote_threshold=0.0"]
    assert ingest.main(["--run-id", "notebooks", *overrides]) == 0
    assert train.main(["--promote", *overrides]) == 0
    assert infer.main(["--logical-date", "2024-01-02", *overrides]) == 0
    return overrides


@pytest.fixture(scope="module")
def lake_overrides(request, tmp_path_factory) -> list[str]:
    """Overrides that point a configuration at the sample lake (shared with the Airflow DAG run)."""
    try:
        run = request.getfixturevalue("airflow_pipeline_run")  # conftest.py: one DAG run per session
    except pytest.skip.Exception:
        return build_lake_in_process(tmp_path_factory.mktemp("notebook-lake"))
    return list(run.params["overrides"])


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_headless_and_draws_its_plots(path, lake_overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("SHARDLAKE_NB_OVERRIDES", " ".join(shlex.quote(o) for o in lake_overrides))
    if path.stem == "02_train_and_compare":
        # One more (2-epoch) run with another learning rate, so there are two runs to compare.
        monkeypatch.setenv("SHARDLAKE_NB_TRAIN_OVERRIDES", "train.learning_rate=0.01 train.epochs=2")
    notebook = to_notebook(path)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()
    finally:
        nbformat.write(notebook, tmp_path / f"{path.stem}.ipynb")  # kept for a look after a failure
    assert figures(notebook) >= FIGURES[path.stem], f"{path.stem}: expected {FIGURES[path.stem]} plots"
