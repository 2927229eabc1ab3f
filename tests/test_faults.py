"""Faults during real runs: killed executors and training ranks, concurrent writers.

Each test starts the real jobs as separate processes (as spark-submit or Airflow would), injects
the fault from outside (a signal, or two writers held at a barrier so that they race), and checks
the tables afterwards. Each adds a row to the reliability report.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pyspark.testing import assertDataFrameEqual

from cluster import spark_env, standalone_cluster
from flights_sample import write_sample
from shardlake import delta_io
from shardlake.config import load_config
from shardlake.lake import Lake
from shardlake.stages.ingest import run_ingest

pytestmark = [pytest.mark.slow, pytest.mark.reliability]
REPO = Path(__file__).resolve().parent.parent
KEY = ["year", "month", "day", "carrier", "flight", "origin", "sched_dep_time"]


def _job(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"jobs.{module}", *args]


def _overrides(lake: Lake, sample: Path, *extra: str) -> list[str]:
    return [f"lake.root={lake.root}", f"dataset.source.path={sample}", "dataset.shards=4",
            "spark.settings.spark.driver.memory=1g", *extra]


def _reference_clean(spark, tmp_path: Path, sample: Path):
    """The clean table an undisturbed in-process ingest of the same sample produces."""
    config = load_config([REPO / "conf" / "base.yaml"], [f"dataset.source.path={sample}", "dataset.shards=4"])
    lake = Lake.at(tmp_path / "reference-lake")
    run_ingest(spark, lake, config.dataset, "reference", REPO)
    return delta_io.read_version(spark, lake.table("flights", "clean"))


def _duplicates(df) -> int:
    return df.count() - df.select(*KEY).distinct().count()


def test_ingest_survives_a_killed_executor_with_exact_content(spark, tmp_path, reliability):
    sample, _ = write_sample(tmp_path / "data", every=20)
    lake = Lake.at(tmp_path / "lake")
    with standalone_cluster(tmp_path / "cluster", workers=2, cores=1, memory="2g") as cluster:
        command = _job("ingest", "--run-id", "killed-executor", f"spark.master={cluster.master_url}",
                       "spark.settings.spark.executor.memory=1g", *_overrides(lake, sample))
        log = (tmp_path / "ingest.log").open("w")
        proc = subprocess.Popen(command, cwd=REPO, env=spark_env(), stdout=log, stderr=subprocess.STDOUT)
        killed = []
        deadline = time.monotonic() + 300
        while proc.poll() is None and not killed and time.monotonic() < deadline:
            pids = cluster.executor_pids(0)
            if pids:
                time.sleep(8)  # let tasks start on it, then pull the executor away mid-job
                for pid in cluster.executor_pids(0):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            time.sleep(0.5)
        assert proc.wait(timeout=900) == 0, (tmp_path / "ingest.log").read_text()[-4000:]
    assert killed, "no executor was running on worker 0 to kill"
    actual = delta_io.read_version(spark, lake.table("flights", "clean"))
    expected = _reference_clean(spark, tmp_path, sample)
    lost = expected.join(actual, on=KEY, how="left_anti").count()
    reliability.record("executor killed during ingest (cluster)", f"finished; {len(killed)} executor(s) killed",
                       lost, _duplicates(actual))
    assertDataFrameEqual(actual, expected)


# The ingest job (jobs/ingest.py, unchanged) run by several writers that are made to race at
# chosen points. Each writer signals by touching "<event>.<writer>" in a shared barrier folder
# ("exited.<writer>" when it ends, so nobody waits for a writer that died). argv: the barrier
# folder, this writer, all writers (comma-separated, the first one leads), how the tables are
# created, the tables whose first MERGE is held at a barrier (comma-separated), then ingest's args.
#   creation "serial": the others create (find) each table only after the leader did, so that
#     only the MERGEs race.
#   creation "window": the others try to create the clean table while the leader is half-way
#     through creating it (its _delta_log folder exists, version 0 not yet), the moment a writer
#     that starts a little later hits in unsynchronised runs; then the leader finishes.
#   MERGE barrier: every writer's first write into such a table (a MERGE, or a first load into an
#     empty table) waits until all writers are there, so all start on the same snapshot and Delta
#     must refuse all but one.
# A MERGE that Delta refuses with a conflict is printed as a "RACE:" line, then re-raised for the
# product's own handling.
RACING_INGEST = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from delta import exceptions as X
    from delta.tables import DeltaMergeBuilder
    from shardlake import delta_io
    from jobs import ingest

    barrier, me, writers, creation, merge_tables, *argv = sys.argv[1:]
    barrier, writers, merge_tables = Path(barrier), writers.split(","), set(filter(None, merge_tables.split(",")))
    leader, others = writers[0], [w for w in writers if w != me]
    CONFLICTS = (X.DeltaConcurrentModificationException, X.ConcurrentWriteException, X.MetadataChangedException,
                 X.ProtocolChangedException, X.ConcurrentAppendException, X.ConcurrentDeleteReadException,
                 X.ConcurrentDeleteDeleteException, X.ConcurrentTransactionException, delta_io.FirstLoadTaken)

    def signal(event):
        (barrier / f"{event}.{me}").touch()

    def wait_for(event, who):
        deadline = time.monotonic() + 300
        while not all((barrier / f"{event}.{w}").exists() or (barrier / f"exited.{w}").exists() for w in who):
            if time.monotonic() > deadline:
                print(f"RACE: {me} waited 300 s for {who} at {event}; going on", flush=True)
                return
            time.sleep(0.02)

    ensure_table, merge_by_key, execute = delta_io.ensure_table, delta_io.merge_by_key, DeltaMergeBuilder.execute
    first_load = delta_io.first_load
    ensured, merging, target = set(), set(), [None]

    def ensure_table_in_turn(spark, path, *args, **kwargs):
        table = Path(path).name
        first_call = table not in ensured
        ensured.add(table)
        if first_call and creation == "serial" and me != leader:
            wait_for(f"ensured-{table}", [leader])
        if first_call and creation == "window" and table == "clean":
            log_folder = Path(path, "_delta_log")
            if me == leader:
                log_folder.mkdir(parents=True)
                signal("window-open")
                wait_for("ensured-clean", others)
                try:
                    log_folder.rmdir()  # still empty: now create the table for real
                except OSError:
                    pass
            else:
                wait_for("window-open", [leader])
        try:
            return ensure_table(spark, path, *args, **kwargs)
        finally:
            if first_call:
                signal(f"ensured-{table}")

    def at_the_barrier(path, write):
        table = Path(path).name if path else None
        if table in merge_tables and table not in merging:  # only the first write: a retry runs at once
            merging.add(table)
            signal(f"merge-{table}")
            wait_for(f"merge-{table}", others)
        try:
            return write()
        except CONFLICTS as err:
            print(f"RACE: {me} lost the MERGE into {path} to a concurrent writer ({type(err).__name__})", flush=True)
            raise

    def merge_by_key_noting_the_table(spark, path, *args, **kwargs):
        target[0] = path
        return merge_by_key(spark, path, *args, **kwargs)

    def execute_at_the_barrier(self):
        return at_the_barrier(target[0], lambda: execute(self))

    def first_load_at_the_barrier(spark, path, *args, **kwargs):
        return at_the_barrier(path, lambda: first_load(spark, path, *args, **kwargs))

    delta_io.ensure_table = ensure_table_in_turn
    delta_io.merge_by_key = merge_by_key_noting_the_table
    DeltaMergeBuilder.execute = execute_at_the_barrier
    delta_io.first_load = first_load_at_the_barrier
    try:
        code = ingest.main(argv)
    finally:
        signal("exited")
    raise SystemExit(code)
""")
WRITERS = ["concurrent-0", "concurrent-1"]


def _racing_ingests(lake: Lake, sample: Path, barrier: Path, creation: str, merge_tables: str) -> dict[str, tuple]:
    """Run the writers at once; their (exit code, output) by name."""
    barrier.mkdir()
    procs = {name: subprocess.Popen([sys.executable, "-c", RACING_INGEST, str(barrier), name, ",".join(WRITERS),
                                     creation, merge_tables, "--run-id", name, *_overrides(lake, sample)],
                                    cwd=REPO, env=spark_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
             for name in WRITERS}
    outputs = {name: p.communicate(timeout=900)[0] for name, p in procs.items()}
    return {name: (procs[name].returncode, outputs[name]) for name in WRITERS}


def _log(runs: dict[str, tuple]) -> str:
    return "\n\n".join(f"--- {name} (exit {code}):\n{out[-3000:]}" for name, (code, out) in runs.items())


def test_two_concurrent_ingests_leave_no_duplicates(spark, tmp_path, reliability):
    sample, _ = write_sample(tmp_path / "data", every=50)
    lake = Lake.at(tmp_path / "lake")
    runs = _racing_ingests(lake, sample, tmp_path / "barrier", "serial", "clean,quarantine")
    clean = lake.table("flights", "clean")
    lost_merges = {name: re.findall(r"^RACE: \S+ lost the MERGE into (\S+) to a concurrent writer \((\w+)\)$",
                                    out, re.M) for name, (_, out) in runs.items()}
    clean_losers = [name for name, lost in lost_merges.items() if any(path == clean for path, _ in lost)]

    # Both writers finished, and the race was real: the two first MERGEs into the clean table
    # started on the same (empty) snapshot, Delta refused exactly one of them, and that writer
    # went through the product's retry (which logs this warning) rather than giving up.
    assert {name: code for name, (code, _) in runs.items()} == {name: 0 for name in WRITERS}, _log(runs)
    assert len(clean_losers) == 1, f"the MERGEs into {clean} did not conflict: {lost_merges}\n{_log(runs)}"
    assert f"{clean}: concurrent writer won the commit" in runs[clean_losers[0]][1], _log(runs)

    actual = delta_io.read_version(spark, clean)
    expected = _reference_clean(spark, tmp_path, sample)
    lost, duplicated = expected.join(actual, on=KEY, how="left_anti").count(), _duplicates(actual)
    conflicts = sorted({error for races in lost_merges.values() for _, error in races})
    reliability.record("two concurrent ingests of the same input",
                       f"both finished; {sum(map(len, lost_merges.values()))} MERGE(s) lost a race "
                       f"({', '.join(conflicts)}) and were retried", lost, duplicated)
    assert (lost, duplicated) == (0, 0)
    assertDataFrameEqual(actual, expected)


def test_two_first_ingests_creating_the_tables_at_once_both_finish(spark, tmp_path, reliability):
    sample, _ = write_sample(tmp_path / "data", every=50)
    lake = Lake.at(tmp_path / "lake")
    runs = _racing_ingests(lake, sample, tmp_path / "barrier", "window", "")
    codes = {name: code for name, (code, _) in runs.items()}
    actual = delta_io.read_version(spark, lake.table("flights", "clean"))
    expected = _reference_clean(spark, tmp_path, sample)
    lost, duplicated = expected.join(actual, on=KEY, how="left_anti").count(), _duplicates(actual)
    reliability.record("two first ingests creating the tables at once", f"exit codes {codes}", lost, duplicated)
    assert codes == {name: 0 for name in WRITERS}, _log(runs)
    assert (lost, duplicated) == (0, 0)
    assertDataFrameEqual(actual, expected)


def _gloo_ranks() -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [int(line.split(None, 1)[0]) for line in out.splitlines()[1:] if "gloo_exec_fn" in line]


def test_killed_training_rank_with_no_restart_left_fails_clearly_and_the_rerun_resumes(spark, tmp_path, reliability):
    sample, _ = write_sample(tmp_path / "data", every=50)
    lake = Lake.at(tmp_path / "lake")
    overrides = _overrides(lake, sample, "train.epochs=4", "train.batch_size=32", "train.promote_threshold=0.0",
                           "train.early_stopping_patience=10")
    assert subprocess.run(_job("ingest", "--run-id", "for-training", *overrides), cwd=REPO, env=spark_env(),
                          capture_output=True, timeout=900).returncode == 0
    run_dir = lake.model_dir("flights", "kill-test")
    log = (tmp_path / "train.log").open("w")
    # No in-job restart (train.max_restarts=0): the failure a person sees once the restarts are spent.
    proc = subprocess.Popen(_job("train", "--run-id", "kill-test", *overrides, "train.max_restarts=0"), cwd=REPO,
                            env=spark_env(), stdout=log, stderr=subprocess.STDOUT)
    killed = False
    deadline = time.monotonic() + 600
    while proc.poll() is None and time.monotonic() < deadline:
        ranks = _gloo_ranks()
        if (run_dir / "checkpoint.pt").exists() and ranks and not killed:
            os.kill(ranks[-1], signal.SIGKILL)  # a worker process dies after the first checkpoint
            killed = True
        time.sleep(0.2)
    code = proc.wait(timeout=600)
    output = (tmp_path / "train.log").read_text()
    assert killed and code != 0, output[-3000:]
    assert "start the same run again to resume" in output
    rerun = subprocess.run(_job("train", "--run-id", "kill-test", *overrides), cwd=REPO, env=spark_env(),
                           capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    card = json.loads((run_dir / "card.json").read_text())
    reliability.record("training rank killed after a checkpoint, no restart allowed",
                       f"failed with a resume hint; rerun resumed from epoch {card['resumed_from']}", 0, 0)
    assert card["resumed_from"] is not None and card["resumed_from"] >= 1
    assert [h["epoch"] for h in card["history"]] == [0, 1, 2, 3]
