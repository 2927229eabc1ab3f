"""What a training run puts in MLflow: parameters, tags, per-epoch metrics, artifacts, the pyfunc model.

``tracking.log_training`` decides whether and where; this module fills one run and registers its
model as a version of ``shardlake-<dataset>`` (mlflow is imported by ``tracking`` on first use).
"""
from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

from shardlake.folders import Folder
from shardlake.models.tabular import SPEC_FILE, WEIGHTS_FILE
from shardlake.ops import tracking

CARD_FILE = "card.json"
CURVE_FILE = "training_curve.png"
# What the pyfunc model imports where it is loaded (shardlake itself must be importable there too).
MODEL_REQUIREMENTS = ("mlflow", "torch", "pyarrow", "pandas", "numpy", "pyspark")


def _flat(prefix: str, value, out: dict[str, str]) -> dict[str, str]:
    """Nested settings as MLflow params: dotted keys (``elastic.min_proc``), lists as JSON."""
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), inner, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, list) else str(value)
    return out


def _metrics(card: Mapping) -> list[tuple[str, float, int]]:
    """(key, value, step) per epoch of the card's history (step = epoch) and the test metrics (step 0)."""
    rows = []
    for entry in card.get("history", []):
        scalars = {k: v for k, v in entry.items() if k not in ("epoch", "validation")}
        scalars.update({f"validation_{k}": v for k, v in entry.get("validation", {}).items()})
        rows += [(k, float(v), int(entry["epoch"])) for k, v in scalars.items() if isinstance(v, (int, float))]
    rows += [(f"test_{k}", float(v), 0) for k, v in card.get("test_metrics", {}).items() if isinstance(v, (int, float))]
    return rows


def _tags(card: Mapping) -> dict[str, str]:
    """The run's identity: what was trained on, by which configuration and code."""
    return {tracking.VERSION_TAG: card["model_version"], "shardlake.dataset": card["dataset"],
            "shardlake.config_hash": card["config_hash"], "shardlake.code_version": card["code_version"],
            "shardlake.table_path": card["table_path"], "shardlake.table_version": str(card["table_version"]),
            "shardlake.backend": str(card.get("backend")), "shardlake.num_proc": str(card.get("num_proc"))}


def _requirements() -> list[str]:
    """The pyfunc model's pip requirements, pinned to what trained it (given, so MLflow infers none)."""
    pins = []
    for name in MODEL_REQUIREMENTS:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


def _experiment(client, artifact_root: str | None, dataset: str) -> str:
    """The dataset's experiment id (``shardlake-<dataset>``), created on first use."""
    name = tracking.registered_model_name(dataset)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    # One folder per experiment under the embedded store's artifact root (MLflow's 'Default' has '0').
    location = f"{artifact_root}/{name}" if artifact_root else None
    return client.create_experiment(name, artifact_location=location)


def log_new(client, artifact_root: str | None, name: str, card: Mapping, store) -> str:
    """A new run of ``card``'s model version, filled and registered; marked FAILED if that does not complete."""
    run = client.create_run(_experiment(client, artifact_root, card["dataset"]), run_name=card["model_version"],
                            tags=_tags(card))
    run_id = run.info.run_id
    try:
        return _fill_run(client, run_id, name, card, store)
    except Exception:
        client.set_terminated(run_id, "FAILED")  # a run of the model version that did not complete
        raise


def _fill_run(client, run_id: str, name: str, card: Mapping, store) -> str:
    """Params, metrics, tags, artifacts and the pyfunc model on ``run_id``, then a registered version of it."""
    mlflow = tracking.mlflow_module()
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    params = _flat("", (card.get("config") or {}).get("train", {}), {})
    params["model_version"] = card["model_version"]
    client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v, step in _metrics(card)],
                     params=[Param(k, v[:6000]) for k, v in sorted(params.items())],
                     tags=[RunTag(k, v) for k, v in _tags(card).items()])
    folder = Folder(card["model_dir"], store)
    with tempfile.TemporaryDirectory(prefix="shardlake-mlflow-") as scratch:
        local = Path(scratch)
        for file in (CARD_FILE, CURVE_FILE, SPEC_FILE, WEIGHTS_FILE):
            if folder.exists(file):
                (local / file).write_bytes(folder.read_bytes(file))
        for file in (CARD_FILE, CURVE_FILE):
            if (local / file).exists():
                client.log_artifact(run_id, str(local / file))
        from shardlake.ops import pyfunc

        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(  # models from code: the entry file, not a pickle
                name="model", python_model=str(Path(pyfunc.__file__).with_name("pyfunc_entry.py")),
                pip_requirements=_requirements(),
                artifacts={pyfunc.SPEC_ARTIFACT: str(local / SPEC_FILE),
                           pyfunc.WEIGHTS_ARTIFACT: str(local / WEIGHTS_FILE)})
    if not tracking.is_registered(client, name):
        client.create_registered_model(name, description=f"shardlake models of the dataset {card['dataset']}")
    version = client.create_model_version(name, info.model_uri, run_id=run_id,
                                          tags={tracking.VERSION_TAG: card["model_version"]}, model_id=info.model_id)
    return str(version.version)
