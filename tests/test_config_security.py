"""Configuration safety: safe YAML only, secrets never copied out, lake paths stay inside the root."""
from __future__ import annotations

import pytest

from shardlake.config import ConfigError, load_config
from shardlake.lake import Lake, LakePathError


def test_yaml_tags_that_build_python_objects_are_refused(tmp_path, repo):
    evil = tmp_path / "evil.yaml"
    evil.write_text("lake: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="evil.yaml: not valid YAML"):
        load_config([repo / "conf" / "base.yaml", evil])


def test_public_dump_masks_secret_settings(repo):
    config = load_config([repo / "conf" / "base.yaml"],
                         ["spark.settings.spark.hadoop.fs.s3a.secret.key=hunter2",
                          "spark.settings.spark.hadoop.fs.s3a.access.key=AKIA123"])
    settings = config.public_dump()["spark"]["settings"]
    assert (settings["spark.hadoop.fs.s3a.secret.key"], settings["spark.hadoop.fs.s3a.access.key"]) == ("***", "***")
    assert settings["spark.sql.shuffle.partitions"] == "8"


def test_dataset_name_that_would_leave_the_lake_is_refused(repo):
    with pytest.raises(ConfigError, match=r"dataset\.name: .*identifier"):
        load_config([repo / "conf" / "base.yaml"], ["dataset.name=../../etc"])


def test_lake_refuses_a_table_path_outside_its_root(tmp_path):
    with pytest.raises(LakePathError, match="outside the lake root"):
        Lake.at(tmp_path / "lake").table("flights", "../../elsewhere")


def test_missing_dataset_file_is_named(tmp_path, repo):
    conf = tmp_path / "conf"
    conf.mkdir()
    base = conf / "base.yaml"
    base.write_text("dataset: nosuch\n")
    with pytest.raises(ConfigError, match=r"no dataset file .*nosuch\.yaml"):
        load_config([base])
