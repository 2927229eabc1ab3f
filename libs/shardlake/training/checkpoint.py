"""Epoch checkpoints of a training run: written atomically, the last two kept, loaded only by their own job.

A checkpoint holds tensors and plain values only, so loading one never runs code
(``torch.load(weights_only=True)``); a torn or missing last checkpoint falls back to the one before.
"""
from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import torch

from shardlake.folders import Folder

CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.previous.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that may not be resumed: another job's, or one holding more than tensors and plain values."""


class UnreadableCheckpointError(CheckpointError):
    """A checkpoint file that does not load at all (torn, truncated): an older one may stand in for it."""


def save_checkpoint(run_dir: Folder | str | Path, model, optimizer, epoch: int, history: list[dict], best: dict,
                    job_fingerprint: str, code_version: str = "unknown") -> None:
    """Tensors and plain values only (loadable with weights_only=True), written whole to the run folder
    (a local folder or an object store); the one before is kept as the previous checkpoint."""
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "history": json.dumps(history),
        "best": json.dumps(best),
        "job": job_fingerprint,
        "code_version": code_version,  # in the fingerprint too; kept readable for the refusal message
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    folder = Folder.of(run_dir)
    if folder.exists(CHECKPOINT):
        folder.move(CHECKPOINT, PREVIOUS_CHECKPOINT)  # the last two are kept
    # Written whole (beside and renamed; an object PUT): a rank killed mid-write leaves the old one.
    folder.write_bytes(CHECKPOINT, buffer.getvalue())


def _read_checkpoint(folder: Folder, name: str) -> dict:
    path = folder.file(name)
    try:
        return torch.load(io.BytesIO(folder.read_bytes(name)), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refuses any object but tensors and plain values
        raise CheckpointError(f"{path}: refused to load: it holds more than tensors and plain values "
                              f"({' '.join(str(err).split())[:300]})") from err
    except (RuntimeError, EOFError, OSError) as err:
        raise UnreadableCheckpointError(f"{path}: unreadable checkpoint ({err}); remove it to start the run "
                                        "afresh") from err


def _newest_readable(folder: Folder) -> tuple[str, dict] | None:
    """The newest checkpoint that loads: the last one, else the one before it (the last was lost or torn by
    a failure between the two renames or on the storage); a refusal of its content is not passed over."""
    names = [n for n in (CHECKPOINT, PREVIOUS_CHECKPOINT) if folder.exists(n)]
    for index, name in enumerate(names):
        try:
            return folder.file(name), _read_checkpoint(folder, name)
        except UnreadableCheckpointError:
            if index == len(names) - 1:
                raise
    return None


def load_checkpoint(run_dir: Folder | str | Path, job_fingerprint: str | None = None,
                    code_version: str | None = None) -> dict | None:
    """The run folder's newest loadable checkpoint, or None. Never unpickles objects (weights_only=True).

    With ``job_fingerprint`` (and ``code_version``), a checkpoint of another job (or written by other
    code) is refused: resuming it would mix two trainings in one model.
    """
    found = _newest_readable(Folder.of(run_dir))
    if found is None:
        return None
    path, state = found
    written_by = state.get("code_version")
    if code_version is not None and written_by is not None and written_by != code_version:
        raise CheckpointError(f"{path} belongs to another job: written by code version {written_by}, this run's is "
                              f"{code_version}; start a new run id or remove the run folder")
    if job_fingerprint is not None and state.get("job") != job_fingerprint:
        raise CheckpointError(f"{path} belongs to another job (config, table version, files or code version "
                              f"changed); start a new run id or remove the run folder")
    return state
