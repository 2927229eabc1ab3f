"""Experiment tracking and the registry alias in MLflow: every MLflow call of the platform is here
(and in ``tracking_run``, what one training run logs).

A finished training run is logged once per model version (parameters, identity tags, per-epoch
and test metrics, the card and training curve, the model as a pyfunc model) and registered as a
version of the registered model ``shardlake-<dataset>``, tagged with shardlake's model version.
The lake's registry table (``shardlake.registry``) stays where the gate commits its decision and
figures; the alias (``monitoring.mlflow.alias``) mirrors its production row, moved by the gate
right after that commit, and inference refuses to run when the two disagree.

Where: ``monitoring.mlflow.tracking_uri`` when set; else the embedded store under a local lake
(SQLite ``<lake>/_mlflow/mlflow.db``, artifacts in ``<lake>/_mlflow/artifacts``). A lake on an
object store with no tracking URI has no MLflow: the lake registry alone decides (logged once).
MLflow is imported only when used: it is slow to import and most jobs never need it.
"""
from __future__ import annotations

import fcntl
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from shardlake.config import MlflowSettings
from shardlake.lake import Lake
from shardlake.ops import shown

EMBEDDED_DIR = "_mlflow"
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "artifacts"
VERSION_TAG = "shardlake.model_version"  # on the MLflow model version: which shardlake model it is

log = logging.getLogger("shardlake.tracking")
_told_off: set[str] = set()


class TrackingError(RuntimeError):
    """MLflow could not be written or read, or its alias disagrees with the lake registry."""


@dataclass(frozen=True)
class Target:
    """Where a lake's runs and registered models go."""

    tracking_uri: str
    artifact_location: str | None  # the experiment's artifact root; None: the tracking server's default
    embedded_db: Path | None  # the embedded SQLite file (None for a configured tracking URI)


def target(settings: MlflowSettings, lake: Lake) -> Target | None:
    """The MLflow store for ``lake``, or None when MLflow is off (disabled, or an object-store lake with no URI)."""
    if not settings.enabled:
        return None
    if settings.tracking_uri:
        return Target(settings.tracking_uri, None, None)
    if not lake.is_local:
        if lake.root not in _told_off:
            _told_off.add(lake.root)
            log.warning("%s: no monitoring.mlflow.tracking_uri for a lake on object storage: MLflow is off and the "
                        "lake's registry table alone decides the production model", lake.root)
        return None
    folder = lake.path(EMBEDDED_DIR).resolve()
    return Target(f"sqlite:///{folder / DB_FILE}", (folder / ARTIFACTS_DIR).as_uri(), folder / DB_FILE)


def registered_model_name(dataset: str) -> str:
    return f"shardlake-{dataset}"


def mlflow_module():
    """mlflow, imported on first use, with its console chatter (migrations, registration notes) silenced."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no usage reports from a platform's jobs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import mlflow
        import mlflow.pyfunc  # noqa: F401
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    return mlflow


def _client(t: Target):
    """An MlflowClient on ``t`` (creating the embedded store's folder: its first use creates the database)."""
    mlflow = mlflow_module()
    if t.embedded_db is not None and not t.embedded_db.exists():
        _create_embedded(t)
    return mlflow.MlflowClient(tracking_uri=t.tracking_uri, registry_uri=t.tracking_uri)


def _create_embedded(t: Target) -> None:
    """Create the embedded store once, whole: two jobs of one lake starting at once (two datasets' training)
    would otherwise both run MLflow's schema migrations on the new file, or open it half-migrated."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    (t.embedded_db.parent / ARTIFACTS_DIR).mkdir(parents=True, exist_ok=True)
    with (t.embedded_db.parent / ".create.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, however the holder ends
        if t.embedded_db.exists():
            return
        partial = t.embedded_db.with_name(f".{DB_FILE}.{os.getpid()}.partial")
        partial.unlink(missing_ok=True)
        # With the lake's artifact root, so even MLflow's 'Default' experiment keeps its files under
        # the lake (a client would create it with ./mlruns of whatever folder the job ran in).
        store = SqlAlchemyStore(f"sqlite:///{partial}", t.artifact_location)
        store.engine.dispose()
        os.replace(partial, t.embedded_db)  # appears migrated, or not at all


def _nothing_tracked(t: Target) -> bool:
    """True for an embedded store never written: no version, no alias (and reading it must not create it)."""
    return t.embedded_db is not None and not t.embedded_db.exists()


@contextmanager
def _quiet_uri(uri: str) -> Iterator[None]:
    """The fluent API (needed to log a model) pointed at ``uri`` while inside, without warnings; restored after."""
    mlflow = mlflow_module()
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        mlflow.set_tracking_uri(previous)


def _fail(what: str, t: Target, err: Exception) -> TrackingError:
    first = " ".join(str(err).split())[:300]
    if t.tracking_uri != shown(t.tracking_uri):
        first = first.replace(t.tracking_uri, shown(t.tracking_uri))
    return TrackingError(f"MLflow at {shown(t.tracking_uri)}: could not {what}: {type(err).__name__}: {first}")


def version_of(client, name: str, model_version: str):
    """The MLflow version of ``name`` tagged with shardlake's ``model_version``, or None."""
    found = client.search_model_versions(f"name = '{name}' and tags.`{VERSION_TAG}` = '{model_version}'")
    return max(found, key=lambda v: int(v.version)) if found else None


def log_training(settings: MlflowSettings, lake: Lake, card: Mapping) -> str | None:
    """Log a finished training run and register its model; the MLflow model version (None: MLflow off).

    Once per shardlake model version: a version already registered with its tag is returned as it
    is, so a re-run (or a resumed run whose logging failed) logs nothing twice.
    """
    from shardlake.ops import tracking_run

    t = target(settings, lake)
    if t is None:
        return None
    name = registered_model_name(card["dataset"])
    try:
        client = _client(t)
        existing = _existing(client, name, card["model_version"])
    except Exception as err:
        raise _fail(f"reach its store to log {card['model_version']}", t, err) from err
    if existing is not None:
        return str(existing.version)
    try:
        # The fluent API too (a registration looks the logged model up through it): all on this store.
        with _quiet_uri(t.tracking_uri):
            return tracking_run.log_new(client, t.artifact_location, name, card, lake.store.settings)
    except Exception as err:
        raise _fail(f"log the training run of {card['model_version']}", t, err) from err


def _existing(client, name: str, model_version: str):
    """``version_of``, or None when the registered model does not exist yet."""
    return version_of(client, name, model_version) if is_registered(client, name) else None


def is_registered(client, name: str) -> bool:
    """Whether the registered model ``name`` exists (any other error of the store is raised)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return False
        raise
    return True


def _aliases(client, name: str) -> dict[str, str] | None:
    """The registered model's aliases (alias -> MLflow version), or None when it is not registered."""
    if not is_registered(client, name):
        return None
    return {alias: str(version) for alias, version in (client.get_registered_model(name).aliases or {}).items()}


def point_alias(settings: MlflowSettings, lake: Lake, dataset: str, production: str | None) -> str | None:
    """Point the alias at the MLflow version of ``production`` (the lake registry's production model).

    The gate calls it right after its registry commit, and on every run, so a run after a failed
    move repairs it. Where the production model has no MLflow version (trained with MLflow off)
    or there is none, the alias is removed rather than left on an older model. Returns the
    MLflow version aliased, or None.
    """
    t = target(settings, lake)
    if t is None or _nothing_tracked(t):
        return None
    name = registered_model_name(dataset)
    try:
        client = _client(t)
        aliases = _aliases(client, name)
        if aliases is None:
            return None
        version = version_of(client, name, production) if production else None
        current = aliases.get(settings.alias)
        if version is None:
            if current is not None:
                client.delete_registered_model_alias(name, settings.alias)
            return None
        if current != str(version.version):
            client.set_registered_model_alias(name, settings.alias, version.version)
        return str(version.version)
    except Exception as err:
        raise _fail(f"move {name}@{settings.alias} to the lake registry's production model {production} (the "
                    f"lake registry has it; run the gate again to move the alias)", t, err) from err


def production_version(settings: MlflowSettings, lake: Lake, dataset: str, production: str | None) -> str | None:
    """The production model's shardlake version as the alias names it, checked against ``production``
    (the lake registry's production row): a disagreement is a TrackingError naming both.

    With MLflow off, or nothing of ``dataset`` tracked, the lake registry's answer is returned.
    """
    t = target(settings, lake)
    if t is None or _nothing_tracked(t):
        return production
    name = registered_model_name(dataset)
    try:
        client = _client(t)
        aliases = _aliases(client, name)
        aliased = None if aliases is None else aliases.get(settings.alias)
        tagged = client.get_model_version(name, aliased).tags.get(VERSION_TAG) if aliased else None
        untracked = aliases is None or production is None or version_of(client, name, production) is None
    except Exception as err:
        raise _fail(f"read the alias {name}@{settings.alias}", t, err) from err
    if aliased is None and untracked:
        return production  # a production model trained with MLflow off has no alias to agree with
    if tagged != production:
        said = f"version {aliased} (shardlake model {tagged})" if aliased else "not set"
        raise TrackingError(f"MLflow's alias {name}@{settings.alias} is {said} but the lake registry's production "
                            f"model of {dataset!r} is {production}; run the gate (jobs/promote.py) to make them agree")
    return tagged
