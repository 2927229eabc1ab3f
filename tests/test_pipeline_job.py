"""jobs/pipeline.py (what `make demo` runs): a stage's refusal or failure is one line and an exit code, not a traceback.

The chain on real data is exercised by tests/test_cluster.py (the job in its own process on a
standalone cluster); here only how it stops.
"""
from __future__ import annotations

from flights_sample import flights_csv_lines
from jobs import pipeline as pipeline_job


def _overrides(tmp_path, source) -> list[str]:
    return [f"lake.root={tmp_path / 'lake'}", f"dataset.source.path={source}", "dataset.shards=2",
            "train.epochs=1", "train.num_proc=1", "monitoring.progress=never"]


def test_a_missing_source_stops_the_pipeline_with_one_line_and_code_2(tmp_path, capsys):
    code = pipeline_job.main(["--logical-date", "2024-01-02", *_overrides(tmp_path, tmp_path / "nowhere" / "*.csv")])
    out = capsys.readouterr()
    assert (code, "Traceback" in out.out + out.err) == (2, False)
    assert "ingest refused:" in out.out and "source not found" in out.out


def test_a_table_without_training_rows_stops_the_pipeline_at_training_with_code_1(spark, tmp_path, capsys):
    source = tmp_path / "landing" / "flights.csv"
    source.parent.mkdir()
    source.write_text(flights_csv_lines()[0] + "\n", encoding="utf-8")  # the header, no flight
    code = pipeline_job.main(["--logical-date", "2024-01-02", *_overrides(tmp_path, source)])
    out = capsys.readouterr()
    assert (code, "Traceback" in out.out + out.err) == (1, False)
    assert "training failed:" in out.out and "split is empty" in out.out
