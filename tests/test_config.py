"""Datasets are onboarded by one YAML file: the flights declaration and what a new one needs (no Spark)."""
from __future__ import annotations

from pathlib import Path

import pytest

from shardlake.config import ConfigError, load_config, task_retries
from shardlake.stages.ingest_report import all_rule_names
from shardlake.stages.ingest_write import table_constraints

REPO = Path(__file__).resolve().parent.parent
BASE = REPO / "conf" / "base.yaml"


def test_flights_keeps_its_key_features_and_label():
    spec = load_config([BASE]).dataset
    assert spec.key == ["year", "month", "day", "carrier", "flight", "origin", "sched_dep_time"]
    assert spec.features.numeric == ["sched_dep_hour", "distance", "month", "day_of_week", "temp", "humid",
                                     "wind_speed", "precip", "visib", "seats", "engines"]
    assert spec.features.categorical == ["carrier", "origin", "dest"]
    assert (spec.label.column, spec.label.kind) == ("delayed", "binary")


def test_flights_joins_weather_by_origin_and_hour_and_planes_by_tail_number():
    joins = {j.name: (j.keys, j.select) for j in load_config([BASE]).dataset.joins}
    assert joins == {"weather": ({"origin": "origin", "time_hour": "time_hour"},
                                 ["temp", "humid", "wind_speed", "precip", "visib"]),
                     "planes": ({"tailnum": "tailnum"}, ["seats", "engines"])}


def test_every_dataset_file_under_conf_validates():
    # Every file in the folder, not a glob that could match none: a file that is not YAML, or an
    # empty folder, fails here instead of passing with nothing checked.
    paths = sorted((REPO / "conf" / "datasets").iterdir())
    assert "flights.yaml" in [p.name for p in paths]
    assert [p.name for p in paths if p.suffix != ".yaml"] == []
    names = [load_config([BASE], [f"dataset={path}"]).dataset.name for path in paths]
    assert names == [p.stem for p in paths]


def test_flights_rules_become_delta_check_constraints():
    constraints = table_constraints(load_config([BASE]).dataset)
    assert constraints["range_month"] == "month IS NULL OR (month >= 1.0 AND month <= 12.0)"
    assert constraints["pattern_carrier"] == "carrier IS NULL OR carrier RLIKE '^[A-Z0-9]{2}$'"
    assert constraints["allowed_origin"] == "origin IS NULL OR origin IN ('EWR', 'JFK', 'LGA')"
    assert constraints["required_sched_dep_time"] == "sched_dep_time IS NOT NULL"


def test_a_pattern_with_quotes_and_backslashes_is_a_valid_sql_literal(tmp_path):
    spec = _dataset(tmp_path, "rules: {patterns: {code: \"^\\\\d+'x$\"}}\n")
    assert table_constraints(spec)["pattern_code"] == "code IS NULL OR code RLIKE '^\\\\d+\\'x$'"


def test_rule_names_cover_parse_type_and_declared_rules():
    names = all_rule_names(load_config([BASE]).dataset)
    assert names[:3] == ["malformed", "encoding", "type:year"]
    assert {"required:year", "range:distance", "allowed:origin", "pattern:dest", "finite:air_time"} <= set(names)


def _dataset(tmp_path: Path, extra: str):
    path = tmp_path / "events.yaml"
    path.write_text(
        "name: events\n"
        "source: {format: json, path: data/*.json}\n"
        "columns: [{name: id, type: bigint}, {name: code, type: string}, {name: at, type: timestamp}]\n"
        "key: [id]\n"
        "features: {categorical: [code]}\n"
        "label: {column: code, kind: binary}\n" + extra)
    return load_config([BASE], [f"dataset={path}"]).dataset


def test_a_json_dataset_needs_nothing_but_its_yaml(tmp_path):
    spec = _dataset(tmp_path, "shards: 16\n")
    assert (spec.source.format, spec.source.path, spec.shards, spec.key) == ("json", "data/*.json", 16, ["id"])


def test_a_rule_on_an_unknown_column_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"rules.ranges names unknown column\(s\) \['price'\]"):
        _dataset(tmp_path, "rules: {ranges: {price: {min: 0}}}\n")


def test_a_source_path_template_with_an_unknown_placeholder_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"dataset.source.path.*unknown placeholder \{date\}"):
        load_config([BASE], ["dataset=flights", "dataset.source.path=landing/{date}/*.csv"])


def test_elastic_training_on_a_master_that_never_retries_a_task_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"train.elastic: spark.master 'local\[2\]' never retries a failed task"):
        load_config([BASE], ["spark.master=local[2]", "train.elastic.min_proc=1"])


def test_elastic_training_needs_the_horovod_backend():
    with pytest.raises(ConfigError, match=r"train: .*elastic: needs backend 'horovod'"):
        load_config([BASE], ["spark.master=local[2,4]", "train.elastic.min_proc=1", "train.backend=torch_distributor"])


def test_elastic_training_needs_num_proc_between_min_and_max_proc():
    with pytest.raises(ConfigError, match=r"expected min_proc <= num_proc <= max_proc, got 1 <= 3 <= 2"):
        load_config([BASE], ["spark.master=local[2,4]", "train.num_proc=3", "train.elastic.max_proc=2"])


def test_elastic_training_on_a_master_with_task_retries_is_accepted():
    config = load_config([BASE], ["spark.master=local[2,4]", "train.elastic.commit_every_steps=50"])
    assert (config.train.elastic.min_proc, config.train.elastic.commit_every_steps) == (1, 50)


@pytest.mark.parametrize(("master", "retries"), [("local", False), ("local[2]", False), ("local[*]", False),
                                                 ("local[2,1]", False), ("local[2,4]", True), ("local[*, 3]", True),
                                                 ("spark://host:7077", True), ("yarn", True)])
def test_task_retries_follow_the_master_url(master, retries):
    assert task_retries(master) is retries


def test_an_s3_lake_root_must_use_the_s3a_scheme():
    with pytest.raises(ConfigError, match=r"lake.root: .*'s3://bucket/lake': use s3a://"):
        load_config([BASE], ["lake.root=s3://bucket/lake"])


def test_a_lake_root_on_an_unsupported_store_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"lake.root: .*abfss:// is not supported yet"):
        load_config([BASE], ["lake.root=abfss://lake@account.dfs.core.windows.net/lake"])


def test_a_gcs_lake_root_must_use_the_gs_scheme():
    with pytest.raises(ConfigError, match=r"lake.root: .*'gcs://bucket/lake': use gs://"):
        load_config([BASE], ["lake.root=gcs://bucket/lake"])


def test_a_gs_lake_root_is_accepted():
    assert load_config([BASE], ["lake.root=gs://bucket/lake"]).lake.root == "gs://bucket/lake"


def test_an_endpoint_carrying_credentials_is_refused():
    with pytest.raises(ConfigError, match=r"lake.endpoint: .*must not carry credentials"):
        load_config([BASE], ["lake.root=s3a://bucket/lake", "lake.endpoint=http://key:secret@127.0.0.1:9000"])


def test_the_refusal_of_an_endpoint_with_credentials_does_not_repeat_them():
    with pytest.raises(ConfigError) as refused:
        load_config([BASE], ["lake.root=s3a://bucket/lake", "lake.endpoint=http://key:hunter2@127.0.0.1:9000"])
    assert "hunter2" not in str(refused.value) and "key:" not in str(refused.value)


def test_a_spark_setting_given_as_a_number_is_taken_as_spark_reads_it():
    config = load_config([BASE], ["spark.settings.spark.sql.shuffle.partitions=4",
                                  "spark.settings.spark.sql.adaptive.enabled=false"])
    assert (config.spark.settings["spark.sql.shuffle.partitions"],
            config.spark.settings["spark.sql.adaptive.enabled"]) == ("4", "false")


def test_the_pushgateway_is_configured_as_the_issue_spells_it():
    monitoring = load_config([BASE], ["monitoring.pushgateway_url=http://127.0.0.1:9091",
                                      "monitoring.push_timeout_s=2"]).monitoring
    assert (monitoring.prometheus.pushgateway_url, monitoring.prometheus.push_timeout_s) == ("http://127.0.0.1:9091", 2.0)


def test_a_pushgateway_url_carrying_credentials_is_refused_without_repeating_them():
    with pytest.raises(ConfigError) as refused:
        load_config([BASE], ["monitoring.pushgateway_url=http://ops:hunter2@127.0.0.1:9091"])
    assert "monitoring.pushgateway_url" in str(refused.value) and "hunter2" not in str(refused.value)
