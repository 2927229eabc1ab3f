"""Epoch checkpoints: atomic writes, the last two kept, torn or foreign files never loaded."""
from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import pytest
import torch

from shardlake.folders import Folder
from shardlake.training.checkpoint import (CHECKPOINT, PREVIOUS_CHECKPOINT, CheckpointError, load_checkpoint,
                                           save_checkpoint)

# Writes the epoch-0 checkpoint, then SIGKILLs itself halfway through writing epoch 1's file: the
# bytes up to its middle reach the disk, as when a preempted node dies while writing.
KILLED_MID_WRITE = textwrap.dedent("""
    import os, pathlib, signal, sys
    import torch
    from shardlake.training import checkpoint

    run_dir = pathlib.Path(sys.argv[1])
    model = torch.nn.Linear(256, 256)
    optimizer = torch.optim.Adam(model.parameters())
    checkpoint.save_checkpoint(run_dir, model, optimizer, 0, [], {}, "job")

    def dying_write(path, data):
        with open(path, "wb") as out:
            out.write(data[: len(data) // 2])
            out.flush()
            os.fsync(out.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    pathlib.Path.write_bytes = dying_write
    checkpoint.save_checkpoint(run_dir, model, optimizer, 1, [], {}, "job")
""")


def _save(run_dir, epoch: int, fingerprint: str = "job") -> None:
    model = torch.nn.Linear(3, 1)
    save_checkpoint(run_dir, model, torch.optim.Adam(model.parameters()), epoch, [{"epoch": epoch}], {}, fingerprint)


def _epoch(path) -> int:
    return int(torch.load(path, weights_only=True)["epoch"])


@pytest.mark.reliability
def test_a_checkpoint_half_written_when_its_process_is_killed_is_never_loaded(tmp_path, reliability):
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_WRITE, str(tmp_path)], capture_output=True, timeout=300)
    state = load_checkpoint(tmp_path, "job")
    torn = (tmp_path / f".{CHECKPOINT}.partial").stat().st_size
    reliability.record("a process SIGKILLed halfway through writing a checkpoint",
                       f"exit {killed.returncode}; {torn} bytes left in the partial file; epoch {state['epoch']} "
                       "loaded", 0, 0)
    assert (killed.returncode, int(state["epoch"])) == (-9, 0)
    assert torn > 0


def test_the_last_two_checkpoints_are_kept(tmp_path):
    for epoch in range(3):
        _save(tmp_path, epoch)
    assert ([_epoch(tmp_path / CHECKPOINT), _epoch(tmp_path / PREVIOUS_CHECKPOINT)],
            sorted(p.name for p in tmp_path.iterdir())) == ([2, 1], sorted([CHECKPOINT, PREVIOUS_CHECKPOINT]))


def test_checkpoints_on_an_object_store_are_resumed_and_the_last_two_kept(s3_server):
    folder = Folder(f"s3a://{s3_server.bucket('checkpoint')}/lake/models/m", s3_server.settings)
    for epoch in range(3):
        _save(folder, epoch)
    previous = torch.load(io.BytesIO(folder.read_bytes(PREVIOUS_CHECKPOINT)), weights_only=True)
    assert (int(load_checkpoint(folder, "job")["epoch"]), int(previous["epoch"]), folder.names()) == \
        (2, 1, sorted([CHECKPOINT, PREVIOUS_CHECKPOINT]))


def test_a_torn_last_checkpoint_falls_back_to_the_one_before(tmp_path):
    _save(tmp_path, 0)
    _save(tmp_path, 1)
    (tmp_path / CHECKPOINT).write_bytes(b"PK\x03\x04 torn")
    assert int(load_checkpoint(tmp_path, "job")["epoch"]) == 0


def test_a_torn_only_checkpoint_is_reported_as_unreadable(tmp_path):
    (tmp_path / CHECKPOINT).write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_of_another_fingerprint_is_refused(tmp_path):
    _save(tmp_path, 0, fingerprint="another")
    with pytest.raises(CheckpointError, match="belongs to another job"):
        load_checkpoint(tmp_path, "job")


def test_a_run_folder_without_a_checkpoint_has_nothing_to_resume(tmp_path):
    assert load_checkpoint(tmp_path, "job") is None


class _Marker:
    """Unpickling this would create a file: proof that pickled code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_checkpoint_holding_a_pickled_object_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pickle-ran"
    torch.save({"epoch": 0, "model": {}, "payload": _Marker(marker)}, tmp_path / CHECKPOINT)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path)
    assert not marker.exists()
