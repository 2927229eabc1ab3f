"""Typed configuration: YAML files under conf/ loaded safely, merged, overridden and validated.

Every knob of a run lives here. Jobs load it once, before Spark starts, and hand plain values to
``shardlake`` functions; a wrong key or type stops the job with a message that names the file,
the key and what was expected.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
import urllib.parse
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from shardlake.intervals import placeholders
from shardlake.storage import StoreSettings

SPARK_TYPES = ("string", "int", "bigint", "double", "float", "boolean", "date", "timestamp")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


_USERINFO = re.compile(r"(://)[^/@\s']+@")
_SECRET_KEY = re.compile(r"(secret|password|passwd|token|credential|access[._-]?key|private[._-]?key)", re.I)


def _redact(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, key) for v in value]
    return "***" if _SECRET_KEY.search(key) and value not in (None, "") else value


class ConfigError(ValueError):
    """Configuration that cannot be used; the message names file, key and expectation."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class ColumnSpec(_Strict):
    name: str
    type: Literal[SPARK_TYPES]  # type: ignore[valid-type]

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENT.match(value):
            raise ValueError(f"column name must be an identifier, got {value!r}")
        return value


class SourceSpec(_Strict):
    format: Literal["csv", "json", "parquet"]
    path: str = Field(description=(
        "file, folder or glob; package://PKG/rel/path for data shipped in a package; may name the run's data "
        "interval, e.g. landing/{ds}/*.csv (placeholders: shardlake.intervals.PLACEHOLDERS)"))
    compression: Literal["none", "zip", "auto"] = "auto"
    delimiter: str = ","
    header: bool = True
    null_values: list[str] = Field(default_factory=lambda: ["", "NA"])
    encoding: str = "UTF-8"
    multiline: bool = Field(default=True, description=(
        "CSV: quoted fields may hold newlines (RFC 4180); false reads large files split by lines, faster, "
        "and a quoted newline is then malformed"))

    @field_validator("path")
    @classmethod
    def _template(cls, value: str) -> str:
        placeholders(value)  # refuses an unknown {name} before Spark starts
        return value


class JoinSpec(_Strict):
    name: str
    source: SourceSpec
    columns: list[ColumnSpec]
    keys: dict[str, str] = Field(description="left column -> right column (not 'on': YAML reads it as true)")
    select: list[str] = Field(description="right columns brought into the dataset")
    dedupe: bool = Field(default=True, description=(
        "true: keep one row per join key (the first by content) and count the others; false: the right side "
        "must be unique on its keys, and a run whose right side is not is refused before any write"))


class RangeRule(_Strict):
    min: float | None = None
    max: float | None = None


class RulesSpec(_Strict):
    required: list[str] = Field(default_factory=list)
    ranges: dict[str, RangeRule] = Field(default_factory=dict)
    allowed: dict[str, list[str]] = Field(default_factory=dict)
    patterns: dict[str, str] = Field(default_factory=dict)
    finite: list[str] = Field(default_factory=list)

    @field_validator("patterns")
    @classmethod
    def _compiles(cls, value: dict[str, str]) -> dict[str, str]:
        for column, pattern in value.items():
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"pattern for {column!r} is not a valid regex: {err}") from err
        return value


class FillSpec(_Strict):
    strategy: Literal["constant", "mean", "median"]
    value: float | str | None = None

    @model_validator(mode="after")
    def _constant_has_value(self) -> "FillSpec":
        if self.strategy == "constant" and self.value is None:
            raise ValueError("strategy 'constant' needs a 'value'")
        return self


class SplitSpec(_Strict):
    train: int = 80
    validation: int = 10
    test: int = 10
    salt: str = "shardlake-split-v1"

    @model_validator(mode="after")
    def _sums_to_100(self) -> "SplitSpec":
        if self.train + self.validation + self.test != 100 or min(self.train, self.validation, self.test) < 0:
            raise ValueError("train + validation + test must be non-negative and add up to 100")
        return self


class FeatureSpec(_Strict):
    numeric: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(default_factory=list)
    max_categories: int = Field(default=500, ge=2)


class LabelSpec(_Strict):
    column: str
    kind: Literal["binary", "regression"]


class DatasetSpec(_Strict):
    name: str
    source: SourceSpec
    columns: list[ColumnSpec]
    key: list[str] = Field(min_length=1)
    order_by: str | None = Field(default=None, description="keeps the latest row of a key")
    on_key_conflict: Literal["quarantine", "keep_one", "replace"] = Field(default="quarantine", description=(
        "rows of one key with different content and no order between them (no order_by, or equal order_by): "
        "quarantine = quarantine them all as key_conflict (the table's row stays); keep_one = keep the one "
        "with the smallest content hash, in a batch and against the table alike; replace = a later run's "
        "row replaces the table's (conflicts inside one batch are still quarantined)"))
    cluster_by: list[str] = Field(default_factory=list, description=(
        "key columns that order the table's data within its partitions (the event date, say): a batch's "
        "MERGE and its check against the table read only the files whose min/max of these columns overlap "
        "the batch's, so a nightly load costs the batch, not the table; OPTIMIZE clusters by them (ZORDER)"))
    joins: list[JoinSpec] = Field(default_factory=list)
    derived: dict[str, str] = Field(default_factory=dict, description="name -> Spark SQL expression")
    rules: RulesSpec = Field(default_factory=RulesSpec)
    fill: dict[str, FillSpec] = Field(default_factory=dict)
    shards: int = Field(default=8, ge=1, le=4096)
    skew_warn_ratio: float = Field(default=1.5, gt=1.0)
    splits: SplitSpec = Field(default_factory=SplitSpec)
    features: FeatureSpec
    label: LabelSpec
    allow_schema_evolution: bool = False

    @field_validator("name")
    @classmethod
    def _table_name(cls, value: str) -> str:
        if not _IDENT.match(value):
            raise ValueError(f"dataset name must be an identifier, got {value!r}")
        return value

    @model_validator(mode="after")
    def _columns_exist(self) -> "DatasetSpec":
        known = {c.name for c in self.columns} | set(self.derived)
        for join in self.joins:
            known |= set(join.select)
        declared = {c.name for c in self.columns}
        checks = {
            "key": (self.key, declared),
            "rules.required": (self.rules.required, known),
            "rules.ranges": (list(self.rules.ranges), known),
            "rules.allowed": (list(self.rules.allowed), known),
            "rules.patterns": (list(self.rules.patterns), known),
            "rules.finite": (self.rules.finite, known),
            "fill": (list(self.fill), known),
            "features.numeric": (self.features.numeric, known),
            "features.categorical": (self.features.categorical, known),
            "label.column": ([self.label.column], known),
            "order_by": ([self.order_by] if self.order_by else [], known),
        }
        for where, (names, pool) in checks.items():
            missing = [n for n in names if n not in pool]
            if missing:
                raise ValueError(f"{where} names unknown column(s) {missing}; known: {sorted(pool)}")
        outside = [c for c in self.cluster_by if c not in self.key]
        if outside:
            # Pruning by a batch's range is exact only for columns the key fixes: a row of the same
            # key in the table then has its values inside the batch's range.
            raise ValueError(f"cluster_by names column(s) {outside} that are not key columns; expected a subset "
                             f"of the key {self.key}")
        return self

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]


def task_retries(master: str) -> bool:
    """Whether Spark retries a failed task on ``master``: local[N] and local[*] never do, local[N,F] does for F >= 2."""
    found = re.fullmatch(r"local(?:\[([^,\]]+)(?:,\s*(\d+))?\])?", master.strip())
    if found is None:
        return True  # a cluster master: spark.task.maxFailures (4 by default)
    return found.group(2) is not None and int(found.group(2)) >= 2


def _server_url(url: str | None, what: str, credentials_advice: str) -> str | None:
    """``url`` when it is http(s)://host[:port] without credentials in it; a refusal never repeats them."""
    if url is None:
        return None
    split = urllib.parse.urlsplit(url)
    if split.username or split.password:
        raise ValueError(f"{what} must not carry credentials: {credentials_advice}")
    if split.scheme not in ("http", "https") or not split.hostname:
        raise ValueError(f"{url!r}: expected http://host[:port] or https://host[:port]")
    return url


class SparkSettings(_Strict):
    master: str = "local[2]"
    app_name: str = "shardlake"
    settings: dict[str, str] = Field(default_factory=dict)

    @field_validator("settings", mode="before")
    @classmethod
    def _as_spark_reads_them(cls, settings: Any) -> Any:
        """Spark settings are text: a number or a boolean from YAML or a ``key=value`` override (``...partitions=4``,
        ``...enabled=false``) is the text Spark would read, not a type error."""
        if not isinstance(settings, dict):
            return settings
        def text(value: Any) -> Any:
            if isinstance(value, bool):
                return str(value).lower()
            return str(value) if isinstance(value, (int, float)) else value
        return {key: text(value) for key, value in settings.items()}


class LakeSettings(_Strict):
    """Where the lake is: a local folder, ``s3a://bucket/prefix`` on an S3-compatible store,
    ``gs://bucket/prefix`` on Google Cloud Storage, or ``hdfs://namenode:port/path``.

    Only where the store is lives here (endpoint, region, addressing); credentials come from the
    environment, the Hadoop configuration or an instance profile, never from a file in the repo.
    """

    root: str = "./lake"
    endpoint: str | None = Field(default=None, description=(
        "S3 endpoint URL, e.g. http://127.0.0.1:9000 (None: AWS's, or AWS_ENDPOINT_URL); for gs://, a GCS "
        "emulator's URL, spoken to unsigned (None: Google's, or STORAGE_EMULATOR_HOST)"))
    region: str | None = None
    path_style: bool = Field(default=False, description="path-style requests (most S3 servers other than AWS)")

    @field_validator("root")
    @classmethod
    def _known_scheme(cls, root: str) -> str:
        scheme = urllib.parse.urlsplit(root).scheme.lower() if "://" in root else ""
        if scheme in ("s3", "s3n"):
            raise ValueError(f"{root!r}: use s3a:// (the scheme of Hadoop's S3A connector, which Spark writes with)")
        if scheme == "gcs":
            raise ValueError(f"{root!r}: use gs:// (the scheme of Hadoop's GCS connector, which Spark writes with)")
        if scheme not in ("", "file", "s3a", "gs", "hdfs"):
            raise ValueError(f"{root!r}: a lake root is a local folder, an s3a://, a gs:// or an hdfs:// URL "
                             f"({scheme}:// is not supported yet)")
        return root

    @field_validator("endpoint")
    @classmethod
    def _endpoint_without_secrets(cls, endpoint: str | None) -> str | None:
        return _server_url(endpoint, "the endpoint", "set them in the environment (AWS_ACCESS_KEY_ID, "
                                                     "AWS_SECRET_ACCESS_KEY) or use a profile or an instance role")

    def store_settings(self) -> StoreSettings:
        return StoreSettings(endpoint=self.endpoint, region=self.region, path_style=self.path_style)


class ElasticSettings(_Strict):
    """Horovod elastic training (``horovod.spark.run_elastic``): a lost rank shrinks the ring instead of failing it."""

    min_proc: int = Field(default=1, ge=1, description="fewest ranks training goes on with after losing some")
    max_proc: int | None = Field(default=None, ge=1, description="most ranks taken in as they come back; None = num_proc")
    commit_every_steps: int = Field(default=200, ge=1, description=(
        "optimizer steps between commits of the in-memory state: the most steps a lost rank costs"))
    reset_limit: int = Field(default=6, ge=1, description=(
        "ring changes (a rank lost, a rank taken in again) after which the run fails like a plain one"))
    timeout_s: int = Field(default=600, ge=10, description="how long the survivors wait for min_proc ranks")


class TrainSettings(_Strict):
    backend: Literal["horovod", "torch_distributor"] = "horovod"
    num_proc: int = Field(default=2, ge=1)
    epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=1024, ge=1)
    learning_rate: float = Field(default=0.003, gt=0)
    lr_scaling: Literal["none", "linear"] = Field(default="none", description=(
        "'linear' multiplies the learning rate by the rank count (for SGD-like optimizers); Adam needs none"))
    hidden: list[int] = Field(default_factory=lambda: [64, 32])
    embedding_dim: int = Field(default=8, ge=1)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    seed: int = 42
    shuffle_buffer: int = Field(default=10000, ge=0)
    early_stopping_patience: int = Field(default=3, ge=1)
    table_version: int | None = Field(default=None, description="None = latest")
    loader_workers: int = Field(default=1, ge=1, description="Petastorm reader threads (1 keeps runs reproducible)")
    loader_pool: Literal["thread", "dummy", "process"] = Field(default="thread", description="Petastorm reader pool")
    architecture: Literal["mlp", "linear"] = Field(default="mlp", description="model in shardlake.models.tabular")
    torch_threads: int | None = Field(default=None, ge=1,
                                      description="intra-op threads per rank on CPU; None = cores / ranks")
    start_timeout_s: int = Field(default=600, ge=10)
    elastic: ElasticSettings | None = Field(default=None, description=(
        "train under horovod.spark.run_elastic (backend horovod): survivors of a lost rank roll back to the last "
        "commit and go on"))
    max_restarts: int = Field(default=2, ge=0, description=(
        "times a failed training stage (a lost rank or executor) is started again by the job itself, resuming "
        "from the last epoch checkpoint, before the job fails"))
    promote_threshold: float = Field(default=0.6, description=(
        "held-out test metric a model must reach for production: a floor for AUC (binary), a ceiling for RMSE "
        "(regression)"))
    reference_sample_rows: int = Field(default=100000, ge=100, description=(
        "training rows sampled for the card's binned feature and score distributions (label-free drift)"))
    promote_margin: float = Field(default=0.0, description=(
        "how much better than the production model, on the same test rows, a candidate must be to replace it "
        "(AUC up, RMSE down); negative tolerates a small loss"))

    @model_validator(mode="after")
    def _elastic_fits(self) -> "TrainSettings":
        e = self.elastic
        if e is None:
            return self
        if self.backend != "horovod":
            raise ValueError(f"elastic: needs backend 'horovod' (horovod.spark.run_elastic), got {self.backend!r}")
        top = e.max_proc or self.num_proc
        if not e.min_proc <= self.num_proc <= top:
            raise ValueError(f"elastic: expected min_proc <= num_proc <= max_proc, got {e.min_proc} <= "
                             f"{self.num_proc} <= {top}")
        if self.loader_workers != 1:
            # A part's stream is taken up again after its committed batches: only one reader thread
            # gives the same row order on every reading.
            raise ValueError(f"elastic: needs loader_workers 1 (a reproducible row order), got {self.loader_workers}")
        return self


class InferSettings(_Strict):
    batch_size: int = Field(default=8192, ge=1)
    model_version: str | None = Field(default=None, description="None = the model trained in this config")
    drift_tolerance: float = Field(default=0.05, ge=0, description=(
        "how much worse than the card's test metrics the rows new to the model may be: absolute for AUC and "
        "accuracy, relative for RMSE and MAE"))
    psi_threshold: float = Field(default=0.2, ge=0, description=(
        "population stability index of a feature or the score, rows new to the model against the training "
        "split, above which it has drifted (0.1: a small shift, 0.25: a large one)"))
    drift_z: float = Field(default=2.0, ge=0, description=(
        "standard errors of a metric at the new rows' count that are also allowed (small samples are noisy)"))
    logical_date: str | None = None
    incremental: bool = Field(default=False, description="score only keys this model version has not scored yet")
    quantize: bool = Field(default=False, description="score with int8 dynamic quantisation (CPU); reports the change")
    quantize_sample_rows: int = Field(default=20000, ge=1, description="rows the float/int8 comparison runs on")
    plot_sample_rows: int = Field(default=100000, ge=1, description="rows sampled for the score distribution plot")


class PrometheusSettings(_Strict):
    """Prometheus metrics of every job (``shardlake.ops.prometheus``): a node-exporter textfile,
    ``metrics.prom``, in the run folder always, and a push to a Pushgateway when ``pushgateway_url`` is
    set (batch jobs end before any scrape), grouped by job and dataset. A failed push is a warning.
    Configured as ``monitoring.pushgateway_url`` and ``monitoring.push_timeout_s``."""

    pushgateway_url: str | None = Field(default=None, description="e.g. http://127.0.0.1:9091; None: no push")
    push_timeout_s: float = Field(default=5.0, gt=0, description="a push that takes longer is a warning, not a failure")


class LineageSettings(_Strict):
    """OpenLineage events of every job (Spark's listener, and the jobs' own events where it sees nothing)."""

    enabled: bool = True
    namespace: str = Field(default="shardlake", description="the OpenLineage job namespace")
    transport: Literal["file", "http", "console"] = Field(default="file", description=(
        "where events go: JSON lines in files, an OpenLineage HTTP backend (Marquez), or the log"))
    location: str | None = Field(default=None, description=(
        "file transport: a local folder for the events (None: the lake root's _lineage/ for a local lake, "
        "else ~/.local/state/shardlake/lineage)"))
    url: str | None = Field(default=None, description="http transport: the backend's base URL, e.g. http://127.0.0.1:5000")
    endpoint: str = Field(default="api/v1/lineage", description="http transport: the path events are POSTed to")
    api_key_env: str = Field(default="OPENLINEAGE_API_KEY", description=(
        "http transport: the environment variable holding the API key, if the backend wants one (never the key)"))

    @field_validator("location")
    @classmethod
    def _local_folder(cls, value: str | None) -> str | None:
        if value is not None and "://" in value:
            raise ValueError("monitoring.lineage.location must be a local folder (events of an object-store "
                             "lake go to a local folder or an HTTP backend)")
        return value

    @model_validator(mode="after")
    def _url_for_http(self) -> "LineageSettings":
        if self.transport == "http" and not self.url:
            raise ValueError("monitoring.lineage.transport=http needs monitoring.lineage.url")
        return self


class MlflowSettings(_Strict):
    """MLflow tracking and model registry (``shardlake.ops.tracking``)."""

    enabled: bool = Field(default=True, description=(
        "log training runs and mirror the production model as a registered-model alias; false: the lake registry only"))
    tracking_uri: str | None = Field(default=None, description=(
        "None: the embedded store under the lake root (SQLite and an artifact folder); any MLflow tracking URI"))
    alias: str = Field(default="champion", description="the registered-model alias the gate moves to a promoted model")


class MonitoringSettings(_Strict):
    """What operators see: metrics, lineage, experiment tracking, live progress. Not part of a model's
    identity (``AppConfig.fingerprint`` leaves it out): where a run reports does not change what it computes."""

    pushgateway_url: str | None = Field(default=None, description=(
        "Pushgateway to push every job's metrics to, e.g. http://127.0.0.1:9091; None: the textfile only"))
    push_timeout_s: float = Field(default=5.0, gt=0, description="a push that takes longer is a warning, not a failure")
    lineage: LineageSettings = Field(default_factory=LineageSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    progress: Literal["auto", "always", "never"] = Field(default="auto", description=(
        "progress bars per Spark stage: auto = on a terminal only (logs get one line per step)"))

    @field_validator("pushgateway_url")
    @classmethod
    def _gateway_without_secrets(cls, url: str | None) -> str | None:
        return _server_url(url, "the Pushgateway URL", "a configuration file is no place for them")

    @property
    def prometheus(self) -> PrometheusSettings:
        """The part of these settings the metrics export needs (``shardlake.ops.prometheus``)."""
        return PrometheusSettings(pushgateway_url=self.pushgateway_url, push_timeout_s=self.push_timeout_s)


class AppConfig(_Strict):
    spark: SparkSettings = Field(default_factory=SparkSettings)
    lake: LakeSettings = Field(default_factory=LakeSettings)
    dataset: DatasetSpec
    train: TrainSettings = Field(default_factory=TrainSettings)
    infer: InferSettings = Field(default_factory=InferSettings)
    monitoring: MonitoringSettings = Field(default_factory=MonitoringSettings)

    @model_validator(mode="after")
    def _elastic_can_be_retried(self) -> "AppConfig":
        if self.train.elastic is not None and not task_retries(self.spark.master):
            raise ValueError(f"train.elastic: spark.master {self.spark.master!r} never retries a failed task, so a "
                             "lost rank cannot come back and its failed task ends the job; expected local[N,F] with "
                             "F >= 2 or a cluster master")
        return self

    def public_dump(self) -> dict:
        """The configuration as plain data with secret-looking values masked: safe for cards and logs.

        Credentials belong in the environment or an Airflow connection; if one reaches a config
        (e.g. a spark.hadoop.fs.s3a.secret.key setting) it must not be copied into artifacts.
        """
        return _redact(self.model_dump(mode="json"))

    def fingerprint(self) -> str:
        """Short stable hash of the configuration that decides what a run computes, recorded on model cards.

        ``monitoring`` is left out: a Pushgateway address or a tracking URI does not change a model.
        """
        blob = json.dumps(self.model_dump(mode="json", exclude={"monitoring"}), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _merge(base: dict, extra: dict, origin: dict, source: str, prefix: str = "") -> dict:
    out = dict(base)
    for key, value in extra.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value, origin, source, dotted + ".")
        else:
            out[key] = copy.deepcopy(value)
            origin[dotted] = source
    return out


_FREE_FORM_MAPS = (("spark", "settings"),)


def _apply_override(data: dict, item: str, origin: dict) -> None:
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key.path=value")
    dotted, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {err}") from err
    parts = dotted.strip().split(".")
    for prefix in _FREE_FORM_MAPS:
        # Keys of these mappings contain dots themselves (spark.executor.memory): keep them whole.
        if tuple(parts[:len(prefix)]) == prefix and len(parts) > len(prefix) + 1:
            parts = [*prefix, ".".join(parts[len(prefix):])]
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value
    origin[dotted.strip()] = "command-line override"


def _origin_of(loc: tuple, origin: dict[str, str]) -> str:
    parts = [str(p) for p in loc]
    for end in range(len(parts), 0, -1):
        dotted = ".".join(parts[:end])
        if dotted in origin:
            return origin[dotted]
    top = parts[0] if parts else ""
    return origin.get(f"<{top}>", origin.get("<root>", "configuration"))


def _format_errors(err: ValidationError, origin: dict[str, str]) -> str:
    lines = []
    for item in err.errors():
        key = ".".join(str(p) for p in item["loc"]) or "<top>"
        where = _origin_of(item["loc"], origin)
        expected = item["msg"]
        if item["type"] == "extra_forbidden":
            expected = "unknown key (typo?); remove it or check the documented keys"
        # An error message is printed and logged: no secret in it (a URL's user:password, a secret-named key).
        got = "'***'" if _SECRET_KEY.search(key) else _USERINFO.sub(r"\1***@", repr(item.get("input")))
        got = got if len(got) <= 80 else got[:77] + "..."
        lines.append(f"{where}: {key}: {expected} (got {got})")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def _resolve_dataset(data: dict, conf_dir: Path, origin: dict) -> None:
    ref = data.get("dataset")
    if not isinstance(ref, str):
        return
    candidate = Path(ref)
    path = candidate if candidate.suffix in (".yaml", ".yml") else conf_dir / "datasets" / f"{ref}.yaml"
    if not path.is_absolute() and not path.exists():
        path = conf_dir / path
    if not path.is_file():
        raise ConfigError(
            f"{origin.get('dataset', 'configuration')}: dataset: no dataset file {path} "
            f"(expected a name under {conf_dir / 'datasets'} or a .yaml path)"
        )
    dataset_origin: dict[str, str] = {}
    dataset = _merge({}, _read_yaml(path), dataset_origin, str(path))
    data["dataset"] = dataset
    origin["<dataset>"] = str(path)
    for key, value in dataset_origin.items():
        origin[f"dataset.{key}"] = value


def load_config(paths: list[str | Path], overrides: list[str] | None = None) -> AppConfig:
    """Load YAML files in order (later wins), resolve the dataset file, apply key=value overrides.

    ``dataset: NAME`` refers to ``<conf dir>/datasets/NAME.yaml``. Overrides may reach into the
    dataset (``dataset.shards=16``). Raises ConfigError before anything else runs.
    """
    if not paths:
        raise ConfigError("no configuration file given (expected at least conf/base.yaml)")
    origin: dict[str, str] = {}
    data: dict[str, Any] = {}
    for raw in paths:
        path = Path(raw)
        data = _merge(data, _read_yaml(path), origin, str(path))
    origin["<root>"] = str(Path(paths[-1]))
    conf_dir = Path(paths[0]).resolve().parent
    dataset_overrides = [o for o in overrides or [] if o.startswith("dataset.")]
    for item in overrides or []:
        if item not in dataset_overrides:
            _apply_override(data, item, origin)
    _resolve_dataset(data, conf_dir, origin)
    for item in dataset_overrides:
        _apply_override(data, item, origin)
    if "dataset" not in data:
        raise ConfigError(f"{paths[-1]}: dataset: missing (expected a dataset name or file)")
    try:
        return AppConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, origin)) from None
