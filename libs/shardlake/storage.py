"""Where bytes live: one small interface over a local folder and object stores, chosen by URL.

Spark reads and writes tables itself, through the Hadoop connectors (``s3a://``, ``gs://`` and
``hdfs://`` are the ones tested and configured here; ``abfss://`` is refused until it can be tested
against a real server: no emulator of Azure's DFS API exists).
Everything else the platform stores or lists (source files and their headers, model weights,
cards, checkpoints, run reports, plots, staging areas) goes through a ``Store``, made by
``Store.create(url)`` the way horovod's ``Store.create`` picks HDFS, DBFS or a local folder. The
file systems are ``pyarrow.fs``'s (S3, GCS and local) and, for HDFS, ``hdfs-native``'s fsspec client
(HDFS's own RPC protocol, no JVM or libhdfs, as delta-rs speaks it) seen through ``pyarrow.fs``;
so no storage protocol is written here. What is written here is what no library does for us: one
spelling of a location per scheme (Spark's ``s3a://bucket/key`` and pyarrow's ``bucket/key`` name
the same object), and the check that a derived location stays under its root, on normalised URLs
(``..``, ``%2e%2e``, another bucket or another scheme are refused).

Credentials are never configured here: pyarrow and the S3A connector both take them from the
environment (``AWS_ACCESS_KEY_ID`` ...), their own configuration files or an instance profile; for
GCS, pyarrow, delta-rs and the GCS connector find Google's application default credentials
(``GOOGLE_APPLICATION_CREDENTIALS``, or the instance's service account). Only where the store is
(``endpoint``, ``region``, path-style addressing) is configuration. A ``gs://`` endpoint is an
emulator (``lake.endpoint``, or ``STORAGE_EMULATOR_HOST`` as Google's own client libraries read it),
spoken to without credentials, as those libraries do.
"""
from __future__ import annotations

import fnmatch
import json
import os
import socket
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow.fs as pafs

# Spark's Hadoop schemes and the one pyarrow (and delta-rs) use for the same store.
_S3 = ("s3a", "s3", "s3n")
_HDFS = ("hdfs",)
_GCS = ("gs",)
_OTHER = ("gcs", "viewfs", "abfss", "abfs", "wasbs", "wasb")
_GLOB = set("*?[")


class StorageError(RuntimeError):
    """A location that cannot be used: unknown scheme, missing bucket, refused credentials (one line, the URL named)."""


class LakePathError(ValueError):
    """A derived location that would leave its root (the lake's, a store's)."""


@dataclass(frozen=True)
class StoreSettings:
    """Where an object store is, for stores other than the cloud's default endpoints (a local S3 server).

    ``endpoint``: ``http://host:port`` or ``https://...``; None: the AWS default, or ``AWS_ENDPOINT_URL``
    from the environment. Secrets are not settings: they come from the environment or a profile.
    """

    endpoint: str | None = None
    region: str | None = None
    path_style: bool = False

    def resolved_endpoint(self, environ: Mapping[str, str] = os.environ) -> str | None:
        return self.endpoint or environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or None

    def resolved_region(self, environ: Mapping[str, str] = os.environ) -> str:
        return self.region or environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or "us-east-1"

    def gcs_emulator(self, environ: Mapping[str, str] = os.environ) -> str | None:
        """The URL of a GCS emulator (``endpoint``, else ``STORAGE_EMULATOR_HOST``), or None for Google's own.

        Google's client libraries read ``STORAGE_EMULATOR_HOST`` (``host:port`` or a URL) and then send
        requests unsigned; every GCS client here does the same for either spelling.
        """
        endpoint = self.endpoint or environ.get("STORAGE_EMULATOR_HOST") or None
        if endpoint and "://" not in endpoint:
            endpoint = f"http://{endpoint}"
        return endpoint.rstrip("/") if endpoint else None


def is_url(location: str) -> bool:
    """True for a location on a store: ``scheme://...`` other than ``file://`` and ``package://`` (a file
    inside an installed Python package), which are local files."""
    scheme = urllib.parse.urlsplit(location).scheme.lower()
    return "://" in location and scheme not in ("", "file", "package")


def _clean_key(path: str, where: str) -> str:
    """A percent-decoded, normalised key: ``a/./b/../c`` -> ``a/c``; a ``..`` above the top is refused."""
    decoded = urllib.parse.unquote(path)
    parts: list[str] = []
    for part in decoded.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise LakePathError(f"{where}: '..' leaves the top of the store")
            parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


@dataclass(frozen=True)
class Location:
    """One location in one store: scheme (Spark's spelling), authority (bucket, container@account, host), key."""

    scheme: str
    authority: str
    key: str

    @classmethod
    def parse(cls, url: str) -> "Location":
        split = urllib.parse.urlsplit(url)
        if not split.netloc:
            raise StorageError(f"{url}: a {split.scheme}:// URL needs a bucket or host, as in {split.scheme}://bucket/path")
        return cls(split.scheme.lower(), split.netloc, _clean_key(split.path, url))

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.authority}/{self.key}".rstrip("/") if self.key else \
            f"{self.scheme}://{self.authority}"

    def join(self, *parts: str) -> "Location":
        joined = "/".join([self.key, *[str(p) for p in parts]])
        return Location(self.scheme, self.authority, _clean_key(joined, f"{self.url} + {'/'.join(map(str, parts))}"))

    def within(self, root: "Location") -> bool:
        same_store = (self.scheme in _S3 and root.scheme in _S3) or self.scheme == root.scheme
        under = not root.key or self.key == root.key or self.key.startswith(root.key + "/")
        return same_store and self.authority == root.authority and under


def child_location(root: str, *parts: str) -> str:
    """The location ``parts`` below ``root`` (a local path, or a URL), normalised; LakePathError if it would
    leave ``root``. Stores, lakes and run folders all derive their locations through this one check."""
    named = "/".join(map(str, parts))
    if not is_url(root):
        base = Path(root)
        candidate = base.joinpath(*map(str, parts)).resolve()
        if candidate != base and base not in candidate.parents:
            raise LakePathError(f"{named!r} resolves to {candidate}, outside {root}")
        return str(candidate)
    base_location = Location.parse(root)
    joined = base_location.join(*parts)
    if not joined.within(base_location):
        raise LakePathError(f"{named!r} resolves to {joined.url}, outside {root}")
    return joined.url


class Store:
    """A root and the file system under it; every location it hands out stays under the root.

    Locations are strings: absolute local paths for a local store, URLs (Spark's scheme) for the
    others, so that the same string goes to Spark, to a table reader and back to the store.
    """

    def __init__(self, root: str, fs: pafs.FileSystem, settings: StoreSettings | None = None):
        self.root = root
        self.fs = fs
        self.settings = settings or StoreSettings()

    @staticmethod
    def create(root: str | Path, settings: StoreSettings | None = None) -> "Store":
        """The store for ``root``: a local folder (a path or ``file://``) or an object store by URL scheme."""
        text = str(root)
        if not is_url(text):
            return LocalStore(text)
        location = Location.parse(text)
        if settings is not None:  # what this process is told about a bucket holds for its later stores
            _SETTINGS[_store_key(location)] = _SETTINGS[(_store_key(location)[0], _ANY)] = settings
        resolved = _settings_for(location)
        return _store_class(location)(location, _object_fs(location, resolved), resolved)

    # Locations
    def child(self, *parts: str) -> str:
        """The location ``parts`` below the root; LakePathError if it would leave the root."""
        return child_location(self.root, *parts)

    def contains(self, location: str) -> bool:
        """True when ``location`` (same spelling as this store's) lies under the root."""
        raise NotImplementedError

    def _fs_path(self, location: str) -> str:
        raise NotImplementedError

    # I/O, all through pyarrow.fs
    def exists(self, location: str) -> bool:
        return self.fs.get_file_info(self._fs_path(location)).type != pafs.FileType.NotFound

    def is_file(self, location: str) -> bool:
        return self.fs.get_file_info(self._fs_path(location)).type == pafs.FileType.File

    def size(self, location: str) -> int:
        return int(self.fs.get_file_info(self._fs_path(location)).size or 0)

    def read_bytes(self, location: str) -> bytes:
        with self.fs.open_input_stream(self._fs_path(location)) as stream:
            return stream.read()

    def open_input(self, location: str):
        """A seekable binary file (zip archives and Parquet footers need to seek)."""
        return self.fs.open_input_file(self._fs_path(location))

    def write_bytes(self, location: str, data: bytes) -> None:
        """Write ``data`` whole: a reader sees the old object or the new one, never a part (see subclasses)."""
        raise NotImplementedError

    def open_output(self, location: str):
        """A binary output stream (an object store uploads in parts and publishes the object on close)."""
        return self.fs.open_output_stream(self._fs_path(location))

    def move(self, source: str, target: str) -> None:
        """Rename a file: atomic on a local folder; a copy then a delete on an object store."""
        self.fs.move(self._fs_path(source), self._fs_path(target))

    def delete(self, location: str) -> None:
        """Remove a file or a folder with everything under it; nothing there is not an error."""
        path = self._fs_path(location)
        info = self.fs.get_file_info(path)
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(path)

    def list_files(self, location: str) -> list[str]:
        """Every file under ``location`` (recursively), sorted."""
        selector = pafs.FileSelector(self._fs_path(location), recursive=True, allow_not_found=True)
        return sorted(self._location(i.path) for i in self.fs.get_file_info(selector) if i.type == pafs.FileType.File)

    def glob(self, pattern: str) -> list[str]:
        """Files matching ``pattern`` (``*``, ``?``, ``[...]`` within one path segment, as ``glob.glob``), sorted."""
        parts = pattern.rstrip("/").split("/")
        fixed = next((i for i, p in enumerate(parts) if _GLOB & set(p)), None)
        if fixed is None:
            return [pattern] if self.is_file(pattern) else []
        base, wanted = "/".join(parts[:fixed]), parts[fixed:]
        selector = pafs.FileSelector(self._fs_path(base), recursive=len(wanted) > 1, allow_not_found=True)
        found = []
        for info in self.fs.get_file_info(selector):
            relative = info.path[len(self._fs_path(base)):].strip("/").split("/")
            if info.type == pafs.FileType.File and len(relative) == len(wanted) and all(
                    fnmatch.fnmatchcase(name, p) for name, p in zip(relative, wanted)):
                found.append(self._location(info.path))
        return sorted(found)

    def _location(self, fs_path: str) -> str:
        raise NotImplementedError

    def check(self) -> None:
        """Fail with one line naming the root when it cannot be reached (a missing bucket, refused credentials)."""

    def spark_settings(self) -> dict[str, str]:
        """Hadoop settings Spark needs to reach this store (none for a local folder)."""
        return {}


class LocalStore(Store):
    """A folder of this machine (the embedded default)."""

    def __init__(self, root: str):
        path = urllib.parse.unquote(root.removeprefix("file://")) if root.startswith("file://") else root
        super().__init__(str(Path(path).expanduser().resolve()), pafs.LocalFileSystem())

    def contains(self, location: str) -> bool:
        base, candidate = Path(self.root), Path(location).resolve()
        return candidate == base or base in candidate.parents

    def _fs_path(self, location: str) -> str:
        return str(Path(location).resolve())

    def _location(self, fs_path: str) -> str:
        return fs_path

    def write_bytes(self, location: str, data: bytes) -> None:
        # Write beside, then rename: a crash leaves the old file or the new one.
        target = Path(location)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")
        partial.write_bytes(data)
        partial.replace(target)


# Where each bucket's store is, as the stores made in this process were told: table readers
# (delta-rs) and source files are handed a URL alone and look its settings up here. A bucket no
# store was made for (a source's, beside the lake's) gets the settings last given for its scheme.
_SETTINGS: dict[tuple[str, str], StoreSettings] = {}
_ANY = "*"


def _store_key(location: Location) -> tuple[str, str]:
    return ("s3" if location.scheme in _S3 else location.scheme, location.authority)


class ObjectStore(Store):
    """A bucket (or container) of an object store; keys under the root's prefix."""

    def __init__(self, location: Location, fs: pafs.FileSystem, settings: StoreSettings | None):
        super().__init__(location.url, fs, settings)
        self.location = location

    def contains(self, location: str) -> bool:
        try:
            return Location.parse(location).within(self.location)
        except (StorageError, LakePathError):
            return False

    _kind = "store"

    def _fs_path(self, location: str) -> str:
        parsed = Location.parse(location)
        if not parsed.within(Location(self.location.scheme, self.location.authority, "")):
            raise LakePathError(f"{location}: not in the {self._kind} "
                                f"{self.location.scheme}://{self.location.authority}")
        return self._path_of(parsed.key)

    def _location(self, fs_path: str) -> str:
        return Location(self.location.scheme, self.location.authority, self._key_of(fs_path)).url

    # How the file system names a key: pyarrow's S3 puts the bucket first.
    def _path_of(self, key: str) -> str:
        return f"{_bucket(self.location)}/{key}".rstrip("/")

    def _key_of(self, fs_path: str) -> str:
        return fs_path.split("/", 1)[1] if "/" in fs_path else ""

    def write_bytes(self, location: str, data: bytes) -> None:
        # An object PUT is atomic: readers see the old object or the new one.
        with self.fs.open_output_stream(self._fs_path(location)) as stream:
            stream.write(data)

    def check(self) -> None:
        bucket = _bucket(self.location)
        try:
            info = self.fs.get_file_info(bucket)
            if info.type == pafs.FileType.NotFound:
                raise StorageError(f"{self.root}: the bucket {bucket!r} does not exist (or these credentials "
                                   "cannot see it); create it, or set lake.root / the source path to one that exists")
            self.fs.get_file_info(pafs.FileSelector(self._fs_path(self.root), allow_not_found=True))
        except OSError as err:
            raise StorageError(f"{self.root}: cannot be read with the credentials of this environment "
                               f"({_first_line(err)}); {self._credentials_hint}") from None

    _credentials_hint = "set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile or an instance role that may read it"

    def spark_settings(self) -> dict[str, str]:
        if self.location.scheme not in _S3:
            return {}
        return s3a_settings(self.settings)


class HdfsStore(ObjectStore):
    """A folder of an HDFS namespace (``hdfs://namenode:port/path``); paths are absolute in the namespace.

    HDFS renames are atomic (with overwrite), so files are written beside and renamed, as locally.
    """

    _kind = "namespace"

    def _path_of(self, key: str) -> str:
        return f"/{key}"

    def _key_of(self, fs_path: str) -> str:
        return fs_path.lstrip("/")

    @property
    def fsspec(self):
        """hdfs-native's fsspec file system under this store (renames with overwrite; Petastorm reads with it)."""
        return self.fs.handler.fs

    def write_bytes(self, location: str, data: bytes) -> None:
        target = self._fs_path(location)
        folder, _, name = target.rpartition("/")
        partial = f"{folder}/.{name}.partial"
        with self.fs.open_output_stream(partial) as stream:
            stream.write(data)
        self.fsspec.mv(partial, target, overwrite=True)

    def move(self, source: str, target: str) -> None:
        self.fsspec.mv(self._fs_path(source), self._fs_path(target), overwrite=True)

    def check(self) -> None:
        try:
            # hdfs-native retries a refused connection for minutes; a NameNode given as host:port that
            # refuses a TCP connection is down or wrong, which is said at once. (An HA nameservice is
            # resolved from HADOOP_CONF_DIR by the client itself.)
            _connect(self.root)
            self.fs.get_file_info(self._fs_path(self.root))
        except (OSError, RuntimeError) as err:  # hdfs-native raises RuntimeError for RPC failures
            raise StorageError(f"{self.root}: the HDFS NameNode {self.location.authority} cannot be reached "
                               f"({_first_line(err)}); check the host and port, or HADOOP_CONF_DIR") from None

    def spark_settings(self) -> dict[str, str]:
        return {}  # Spark's own Hadoop client speaks HDFS


class GcsStore(ObjectStore):
    """A bucket of Google Cloud Storage (``gs://bucket/prefix``), through pyarrow's GCS file system."""

    _credentials_hint = ("set GOOGLE_APPLICATION_CREDENTIALS to a service account's key file, or run with an "
                         "instance service account, that may read it")

    def spark_settings(self) -> dict[str, str]:
        return gcs_connector_settings(self.settings)

    def delete(self, location: str) -> None:
        path = self._fs_path(location)
        if self.fs.get_file_info(path).type != pafs.FileType.Directory:
            return super().delete(location)
        # A folder on GCS is often only a prefix of its objects, with no marker object of its own,
        # which pyarrow's delete_dir insists on removing too.
        self.fs.delete_dir_contents(path, missing_dir_ok=True)
        try:
            self.fs.delete_file(f"{path}/")
        except FileNotFoundError:
            pass

    def check(self) -> None:
        # pyarrow's GCS client retries a refused connection for a minute or more; an emulator that
        # refuses a TCP connection is down or misnamed, which is said at once.
        emulator = self.settings.gcs_emulator()
        if emulator:
            try:
                _connect(emulator, default_port=443 if emulator.startswith("https://") else 80)
            except OSError as err:
                raise StorageError(f"{self.root}: the GCS endpoint {emulator} cannot be reached ({err}); check "
                                   "lake.endpoint or STORAGE_EMULATOR_HOST") from None
        super().check()


def _connect(url: str, default_port: int | None = None) -> None:
    """Open and close a TCP connection to ``url``'s host and port (OSError when refused); nothing when
    the URL names no port and there is no default (a name its client resolves by itself)."""
    split = urllib.parse.urlsplit(url)
    port = split.port or default_port
    if port:
        socket.create_connection((split.hostname, port), timeout=10).close()


def _store_class(location: Location) -> type[ObjectStore]:
    return HdfsStore if location.scheme in _HDFS else GcsStore if location.scheme in _GCS else ObjectStore


def _delta_rs_gcs_options(settings: StoreSettings) -> dict[str, str]:
    emulator = settings.gcs_emulator()
    if not emulator:
        return {}  # delta-rs finds Google's application default credentials itself
    # object_store (delta-rs's storage layer) reaches a GCS emulator only through a service-account
    # key's ``gcs_base_url``, unsigned with ``disable_oauth``: a key that holds no secret.
    return {"google_service_account_key": json.dumps({
        "gcs_base_url": emulator, "disable_oauth": True, "client_email": "", "private_key": "", "private_key_id": ""})}


def _delta_rs_options(settings: StoreSettings) -> dict[str, str]:
    options = {"AWS_REGION": settings.resolved_region()}
    endpoint = settings.resolved_endpoint()
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        options["AWS_ALLOW_HTTP"] = str(endpoint.startswith("http://")).lower()
    if settings.path_style:
        options["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "false"
    return options


def table_location(location: str) -> tuple[str, dict[str, str]]:
    """A table's location as delta-rs and pyarrow name it (``s3://`` for ``s3a://``) and its storage options.

    The options say where the store is (from the store made for that bucket in this process,
    else the environment); credentials stay in the environment, where delta-rs finds them too.
    """
    if not is_url(location):
        return location, {}
    parsed = Location.parse(location)
    if parsed.scheme in _GCS:
        return parsed.url, _delta_rs_gcs_options(_settings_for(parsed))
    if parsed.scheme not in _S3:
        return location, {}
    return Location("s3", parsed.authority, parsed.key).url, _delta_rs_options(_settings_for(parsed))


def _settings_for(location: Location) -> StoreSettings:
    key = _store_key(location)
    return _SETTINGS.get(key) or _SETTINGS.get((key[0], _ANY)) or StoreSettings()


def store_for(location: str, settings: StoreSettings | None = None) -> Store:
    """The store that holds ``location`` (a local path, or a URL: its bucket's store, with ``settings``,
    else those this process was given for that bucket or its scheme)."""
    if not is_url(location):
        return LocalStore(str(Path(location).anchor or "/"))
    parsed = Location.parse(location)
    return _bucket_store(parsed.scheme, parsed.authority, settings or _settings_for(parsed))


@lru_cache(maxsize=64)
def _bucket_store(scheme: str, authority: str, settings: StoreSettings) -> Store:
    # One client per bucket and settings: a source's files are sized, opened and read one by one,
    # and building an S3 client for each of those calls would repeat the SDK's set-up every time.
    root = Location.parse(f"{scheme}://{authority}")
    return _store_class(root)(root, _object_fs(root, settings), settings)


def _bucket(location: Location) -> str:
    return location.authority


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _object_fs(location: Location, settings: StoreSettings) -> pafs.FileSystem:
    if location.scheme in _S3:
        endpoint = settings.resolved_endpoint()
        kwargs: dict = {"region": settings.resolved_region()}
        if endpoint:
            split = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
            kwargs.update(endpoint_override=split.netloc, scheme=split.scheme)
        # pyarrow 14 always addresses buckets path-style, which every S3 server accepts.
        return pafs.S3FileSystem(**kwargs)
    if location.scheme in _HDFS:
        return _hdfs_fs(location.authority)
    if location.scheme in _GCS:
        return _gcs_fs(settings)
    if location.scheme == "gcs":
        raise StorageError(f"{location.url}: use gs:// (the scheme of Hadoop's GCS connector, which Spark writes with)")
    if location.scheme in _OTHER:
        # Spark reaches Azure through its Hadoop connector, but nothing here can test abfss:// against a
        # real server (no emulator serves Azure's DFS API) and pyarrow 14 has no Azure file system.
        raise StorageError(f"{location.url}: {location.scheme}:// is not supported as a lake or source yet; "
                           "use s3a://, gs://, hdfs:// or a local folder")
    raise StorageError(f"{location.url}: unknown storage scheme {location.scheme!r}; use a local path, s3a://, "
                       "gs:// or hdfs://")


# A GCS request that fails is retried by pyarrow's client for up to 15 minutes by default; a missing
# bucket or an unreachable endpoint should be said well before that.
_GCS_RETRY = 60


def _gcs_fs(settings: StoreSettings) -> pafs.FileSystem:
    from datetime import timedelta

    kwargs: dict = {"retry_time_limit": timedelta(seconds=_GCS_RETRY)}
    emulator = settings.gcs_emulator()
    if emulator:
        split = urllib.parse.urlsplit(emulator)
        kwargs.update(anonymous=True, endpoint_override=split.netloc, scheme=split.scheme)
    return pafs.GcsFileSystem(**kwargs)


def _hdfs_fs(authority: str) -> pafs.FileSystem:
    """``namenode:port`` (or an HA nameservice that HADOOP_CONF_DIR names) as a pyarrow file system."""
    from hdfs_native.fsspec import HdfsFileSystem

    split = urllib.parse.urlsplit(f"hdfs://{authority}")
    return pafs.PyFileSystem(pafs.FSSpecHandler(HdfsFileSystem(host=split.hostname, port=split.port)))


def s3a_settings(settings: StoreSettings) -> dict[str, str]:
    """Spark's S3A settings for where the store is; the credentials stay with S3A's own provider chain
    (environment, Hadoop configuration, instance profile), so no secret reaches a Spark setting."""
    conf = {"spark.hadoop.fs.s3a.endpoint.region": settings.resolved_region()}
    endpoint = settings.resolved_endpoint()
    if endpoint:
        conf["spark.hadoop.fs.s3a.endpoint"] = endpoint
        conf["spark.hadoop.fs.s3a.connection.ssl.enabled"] = str(endpoint.startswith("https://")).lower()
    if settings.path_style:
        conf["spark.hadoop.fs.s3a.path.style.access"] = "true"
    return conf


def gcs_connector_settings(settings: StoreSettings) -> dict[str, str]:
    """Spark's settings for Hadoop's GCS connector; credentials stay with the connector's own chain
    (``GOOGLE_APPLICATION_CREDENTIALS``, the instance's service account). An emulator is spoken to
    unsigned, as Google's client libraries do when ``STORAGE_EMULATOR_HOST`` is set."""
    conf = {"spark.hadoop.fs.gs.impl": "com.google.cloud.hadoop.fs.gcs.GoogleHadoopFileSystem",
            "spark.hadoop.fs.AbstractFileSystem.gs.impl": "com.google.cloud.hadoop.fs.gcs.GoogleHadoopFS"}
    emulator = settings.gcs_emulator()
    if emulator:
        conf.update({"spark.hadoop.fs.gs.storage.root.url": f"{emulator}/",
                     "spark.hadoop.fs.gs.auth.service.account.enable": "false",
                     "spark.hadoop.fs.gs.auth.null.enable": "true"})
    return conf
