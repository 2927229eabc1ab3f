"""shardlake.folders: a run's folder behaves the same on a local folder, an S3 server and a GCS server (real, over HTTP)."""
from __future__ import annotations

import pytest

from shardlake.folders import Folder, LakePathError


@pytest.fixture(params=["local", "s3", "gcs"])
def folder(request, tmp_path):
    if request.param == "local":
        return Folder(tmp_path / "run")
    if request.param == "gcs":
        server = request.getfixturevalue("gcs_server")
        return Folder(f"gs://{server.bucket('folder')}/lake/models/run", server.settings)
    server = request.getfixturevalue("s3_server")
    return Folder(f"s3a://{server.bucket('folder')}/lake/models/run", server.settings)


def _objects(folder: Folder) -> dict[str, bytes]:
    return {name: folder.read_bytes(name) for name in folder.names()}


def test_files_written_are_read_back_by_name(folder):
    folder.make().write_bytes("model.safetensors", b"\x00weights")
    folder.folder("best").write_text("spec.json", "{}")
    assert _objects(folder) == {"best/spec.json": b"{}", "model.safetensors": b"\x00weights"}


def test_a_move_leaves_the_new_name_only(folder):
    folder.make().write_bytes("checkpoint.pt", b"epoch 1")
    folder.move("checkpoint.pt", "checkpoint.previous.pt")
    assert _objects(folder) == {"checkpoint.previous.pt": b"epoch 1"}


def test_a_marker_is_created_once(folder):
    folder.make()
    assert [folder.create_new(".marker"), folder.create_new(".marker")] == [True, False]


def test_a_missing_file_is_file_not_found_naming_it(folder):
    with pytest.raises(FileNotFoundError, match="card.json"):
        folder.make().read_text("card.json")


@pytest.mark.parametrize("name", ["../other/card.json", "best/../../x"])
def test_a_name_that_leaves_the_folder_is_refused(folder, name):
    with pytest.raises(LakePathError, match="outside"):
        folder.file(name)


def test_an_encoded_dot_dot_cannot_leave_a_folder_on_an_object_store():
    with pytest.raises(LakePathError, match="outside"):
        Folder("s3a://bucket/lake/models/m").file("%2e%2e", "other")


def test_a_folder_on_an_object_store_is_spelled_as_its_url():
    assert Folder("s3a://bucket/lake/models/m/").file("best", "model.safetensors") == \
        "s3a://bucket/lake/models/m/best/model.safetensors"
