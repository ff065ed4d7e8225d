"""Object stores behind one small interface: a local folder (the embedded default) and S3.

URIs: `s3://bucket/prefix`, `file:///path`, or a plain path. Keys are relative, '/'-separated paths
below the store's root; a key that could reach outside it (`..`, an absolute path) is refused.
Uploads appear atomically: local files are written under a temporary name and renamed, and S3
objects only exist once their (multipart) upload completes.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Iterator
from urllib.parse import unquote, urlparse
from gvmgen.files import atomic_path

# The sha256 that gvmgen stores with each object it writes to S3. An ETag depends on how the object was
# uploaded or copied (multipart part size), so a scored output copied elsewhere would have another one;
# this digest travels with the object's metadata through copies and names the content alone (an object
# without it is read to hash it).
DIGEST_METADATA = "gvmgen-sha256"
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".mxf", ".mpg", ".mpeg", ".ts", ".m2ts", ".mts",
                    ".wmv")


class ObjectError(ValueError):
    """A problem of one object (its key or its access), never of the store as a whole: the object is
    recorded as failed and the rest of the catalog goes on."""


class StoreError(RuntimeError):
    """The store as a whole failed (unreachable, the credentials refused, no such bucket): never one
    object's fault. The message names the store."""


class UnsafeKey(ObjectError):
    pass


class ObjectUnreadable(ObjectError):
    pass


def local_name(key: str) -> str:
    """A short file name for a downloaded object: never the key itself (keys can be longer than a file
    name may be), but with its extension, which ffmpeg reads."""
    suffix = PurePosixPath(key).suffix[:16]
    return hashlib.sha256(key.encode()).hexdigest()[:16] + suffix


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str | None          # S3's ETag; None for local files (hash them with content_hash)
    modified: datetime


def safe_key(key: str) -> str:
    """A normalised relative key, or UnsafeKey if it could land outside the store's root."""
    if not key or "\\" in key or "\0" in key:
        raise UnsafeKey(f"object key {key!r} is empty or holds a backslash or NUL")
    path = PurePosixPath(key)
    if path.is_absolute() or ".." in path.parts:
        raise UnsafeKey(f"object key {key!r} would land outside the store (absolute, or '..')")
    return str(path)


class LocalStore:
    """A folder; `only` narrows its listing to one file of it (a single video given as the library)."""

    def __init__(self, root: Path, only: str | None = None):
        self.root = Path(root).expanduser().resolve()
        self.only = only

    def __repr__(self) -> str:
        return f"LocalStore({self.root})"

    def uri(self, key: str) -> str:
        """The object's name for people and the database (not checked: see `path`)."""
        return (self.root / key).as_uri()

    def path(self, key: str) -> Path:
        path = (self.root / safe_key(key)).resolve()
        if not path.is_relative_to(self.root):  # a symlink pointing out
            raise UnsafeKey(f"object key {key!r} resolves outside {self.root}")
        return path

    def list(self, extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> Iterator[ObjectInfo]:
        """Every file below the root with one of `extensions`, recursively, in a stable order."""
        if self.only is not None:
            yield _local_info(self.only, (self.root / self.only).stat())
            return
        if not self.root.is_dir():
            raise NotADirectoryError(f"{self.root}: no such folder (nor a video file)")
        stack = [self.root]
        while stack:
            folder = stack.pop()
            with os.scandir(folder) as entries:
                for entry in sorted(entries, key=lambda e: e.name, reverse=True):
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.is_file() and entry.name.lower().endswith(extensions) and not entry.name.startswith("."):
                        yield _local_info(Path(entry.path).relative_to(self.root).as_posix(), entry.stat())

    def content_hash(self, key: str) -> str:
        try:
            return file_sha256(self.path(key))
        except PermissionError as e:
            raise ObjectUnreadable(f"{self.uri(key)}: not readable ({e.strerror})") from None

    def digest(self, found: ObjectInfo) -> str:
        """The content hash of an object as listed (a local file is read)."""
        return self.content_hash(found.key)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def info(self, key: str) -> ObjectInfo | None:
        """What a listing would say of the object, or None when there is none."""
        path = self.path(key)
        return _local_info(key, path.stat()) if path.is_file() else None

    def readable(self, key: str) -> bool:
        return os.access(self.path(key), os.R_OK)

    def download(self, key: str, workdir: Path) -> Path:
        """A local file holding the object: for a local store, the file itself."""
        path = self.path(key)
        if not path.is_file():
            raise ObjectUnreadable(f"{self.uri(key)}: no such object")
        if not os.access(path, os.R_OK):
            raise ObjectUnreadable(f"{self.uri(key)}: not readable (permission denied)")
        return path

    def check_writable(self) -> None:
        """Raise OSError (naming the folder) unless files can be written below the root: a file is made
        and removed in the deepest folder that exists. Nothing else is made: a run stopped before its
        first output leaves no folder behind (the first upload makes them)."""
        existing = next(folder for folder in (self.root, *self.root.parents) if folder.exists())
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing}: exists and is not a folder")
        try:
            tempfile.TemporaryFile(dir=existing).close()
        except OSError as e:  # its message names the temporary file, which the user never chose
            why = ("the output folder is not writable" if existing == self.root
                   else f"the output folder cannot be made: {existing} is not writable")
            raise PermissionError(f"{self.root}: {why} ({e.strerror})") from None

    def upload(self, source: Path, key: str) -> str:
        target = self.path(key)
        with atomic_path(target) as tmp, open(tmp, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
        return self.uri(key)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


def _local_info(key: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(key, st.st_size, None, datetime.fromtimestamp(st.st_mtime, timezone.utc))


class S3Store:
    """An S3 bucket and prefix. Endpoint, region and credentials come from the standard AWS chain
    (environment, profile, instance role; AWS_ENDPOINT_URL for S3-compatible services) unless given."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, region: str | None = None,
                 multipart_mb: int = 16, only: str | None = None):
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket, self.prefix, self.only = bucket, prefix.strip("/"), only
        # Throttling and 5xx are retried with backoff; AWS_MAX_ATTEMPTS / AWS_RETRY_MODE override, as in
        # every AWS tool (a Config given in code would otherwise win over them).
        retries = Config(retries={"max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", 10)),
                                  "mode": os.environ.get("AWS_RETRY_MODE", "adaptive")},
                         connect_timeout=10, read_timeout=60)
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=retries)
        self.transfer = TransferConfig(multipart_threshold=multipart_mb << 20, multipart_chunksize=multipart_mb << 20)

    def __repr__(self) -> str:  # never the credentials
        return f"S3Store(s3://{self.bucket}/{self.prefix})"

    @contextlib.contextmanager
    def _as_store_errors(self, obj: str | None = None):
        """botocore's errors as one line that names the store (StoreError: the store's fault), or, for a
        request about one object (`obj`, its URI) that is missing or forbidden, that object
        (ObjectUnreadable: its own fault)."""
        from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

        where = obj or f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        try:
            yield
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code"))
            if obj and code in ("404", "NoSuchKey", "NotFound", "403", "AccessDenied", "Forbidden"):
                raise ObjectUnreadable(f"{obj}: cannot be read ({code})") from None
            why = {"NoSuchBucket": f"no such bucket ({self.bucket})",
                   "AccessDenied": f"access denied ({e.operation_name})",
                   "InvalidAccessKeyId": "the credentials were refused (InvalidAccessKeyId: no such access key)",
                   "SignatureDoesNotMatch": "the credentials were refused (SignatureDoesNotMatch: a wrong secret key)"}
            raise StoreError(f"{where}: {why.get(code, f'{code} ({e.operation_name})')}") from None
        except NoCredentialsError:
            raise StoreError(f"{where}: no AWS credentials found (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                             "a profile, or an instance role)") from None
        except EndpointConnectionError as e:
            endpoint = urlparse(str(e.kwargs.get("endpoint_url")))
            raise StoreError(f"{where}: the endpoint cannot be reached ({endpoint.scheme}://{endpoint.netloc})") from None

    def _key(self, key: str) -> str:
        key = safe_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def uri(self, key: str) -> str:
        """The object's name for people and the database (not checked: every access goes through `_key`)."""
        return f"s3://{self.bucket}/{self.prefix}/{key}" if self.prefix else f"s3://{self.bucket}/{key}"

    def list(self, extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> Iterator[ObjectInfo]:
        """Page by page (1000 keys at a time): memory does not grow with the size of the library."""
        start = f"{self.prefix}/" if self.prefix else ""
        if self.only is not None:
            with self._as_store_errors(self.uri(self.only)):
                head = self.client.head_object(Bucket=self.bucket, Key=self._key(self.only))
            yield ObjectInfo(self.only, head["ContentLength"], head["ETag"].strip('"'), head["LastModified"])
            return
        pages = iter(self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start))
        while True:
            with self._as_store_errors():
                page = next(pages, None)
            if page is None:
                return
            for obj in page.get("Contents", []):
                key = obj["Key"][len(start):]
                if key.lower().endswith(extensions) and not PurePosixPath(key).name.startswith("."):
                    yield ObjectInfo(key, obj["Size"], obj["ETag"].strip('"'), obj["LastModified"])

    def content_hash(self, key: str) -> str:
        head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        return "etag:" + head["ETag"].strip('"')

    def digest(self, found: ObjectInfo) -> str:
        """The SHA-256 of an object as listed (what the local store's digest of the same bytes is): the
        one gvmgen stored with it when it wrote it, else read from its content (a copy made without its
        metadata, uploaded again by another tool, say), streamed, never held whole."""
        with self._as_store_errors(self.uri(found.key)):
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(found.key))
            stored = head.get("Metadata", {}).get(DIGEST_METADATA)
            if stored and stored.startswith("sha256:"):
                return stored
            body, digest = self.client.get_object(Bucket=self.bucket, Key=self._key(found.key))["Body"], hashlib.sha256()
            for chunk in iter(lambda: body.read(1 << 20), b""):
                digest.update(chunk)
            return "sha256:" + digest.hexdigest()

    def exists(self, key: str) -> bool:
        return self.info(key) is not None

    def info(self, key: str) -> ObjectInfo | None:
        """What a listing would say of the object, or None when there is none."""
        from botocore.exceptions import ClientError

        with self._as_store_errors():
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
        return ObjectInfo(key, head["ContentLength"], head["ETag"].strip('"'), head["LastModified"])

    def download(self, key: str, workdir: Path) -> Path:
        """Streams the object to a file in `workdir` (written, then renamed) and returns it. An object
        that is missing or forbidden is that object's problem (ObjectUnreadable); anything else (the
        endpoint unreachable, say) is the store's."""
        from botocore.exceptions import ClientError

        target = Path(workdir) / local_name(key)
        with self._as_store_errors():
            try:
                with atomic_path(target) as tmp:
                    self.client.download_file(self.bucket, self._key(key), str(tmp), Config=self.transfer)
            except ClientError as e:
                code = str(e.response.get("Error", {}).get("Code"))
                if code in ("404", "NoSuchKey", "NotFound", "403", "AccessDenied", "Forbidden"):
                    raise ObjectUnreadable(f"{self.uri(key)}: cannot be read ({code})") from None
                raise
        return target

    def check_writable(self) -> None:
        """Write and delete a marker object: the bucket exists and these credentials may write to it."""
        marker = self._key(".gvmgen-write-check")
        with self._as_store_errors():
            self.client.put_object(Bucket=self.bucket, Key=marker, Body=b"")
            self.client.delete_object(Bucket=self.bucket, Key=marker)

    def upload(self, source: Path, key: str) -> str:
        with self._as_store_errors():
            self.client.upload_file(str(source), self.bucket, self._key(key), Config=self.transfer,
                                    ExtraArgs={"Metadata": {DIGEST_METADATA: file_sha256(source)}})
        return self.uri(key)


Store = LocalStore | S3Store


def locate(uri: str) -> tuple[Store, str]:
    """The store that holds a recorded object (named by some store's `uri()`) and its key there."""
    folder, name = uri.rsplit("/", 1)
    return open_store(folder), unquote(name) if urlparse(uri).scheme == "file" else name


def fetch_copy(store: Store, key: str, target: Path) -> Path:
    """A private copy of the object at `target`, appearing atomically (a local store's `download`
    hands out the stored file itself, which must never be moved or changed)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".fetch-") as staging:
        got = store.download(key, Path(staging))
        if not got.resolve().is_relative_to(Path(staging).resolve()):
            shutil.copyfile(got, Path(staging) / "copy")
            got = Path(staging) / "copy"
        got.replace(target)
    return target


def _location(store: Store) -> tuple[str, PurePosixPath]:
    """Where a store's objects live: (the filesystem or bucket, the folder or prefix)."""
    if isinstance(store, LocalStore):
        return "file", PurePosixPath(store.root.as_posix())
    return f"s3://{store.bucket}", PurePosixPath("/", store.prefix)


def library_exclusion(source: str, output: str) -> str | None:
    """The key prefix to leave out of the library's listing because the output lies inside it (its
    scored videos are not sources), or None. An output that is the library itself, the folder of a
    single video given as the library, or a folder the library lies in (scored videos land at their
    keys below it, where the library's own videos may be) could replace the sources: ValueError, naming
    both."""
    library, out = open_store(source, single=True), open_store(output)
    (where, root), (out_where, out_root) = _location(library), _location(out)
    if where != out_where:
        return None
    if root != out_root and root.is_relative_to(out_root) and not library.only:
        raise ValueError(f"{canonical(output)}: holds the library {canonical(source)}: a scored video could land on "
                         f"one of its videos "
                         f"(choose an output folder outside the library, or inside it)")
    if not out_root.is_relative_to(root):
        return None
    if out_root == root and library.only:
        raise ValueError(f"{output}: is the folder of {source}: the scored video would replace it "
                         f"(choose another output folder)")
    if out_root == root:
        raise ValueError(f"{output}: is the library itself: scored videos would replace its videos "
                         f"(choose another output folder; one inside the library is left out of its listing)")
    return None if library.only else f"{out_root.relative_to(root).as_posix()}/"


def canonical(location: str | Path) -> str:
    """A library or an output as runs record it: a local one as an absolute path (a run retried from
    another folder finds the same files), an S3 one as given, less a trailing slash. What open_store
    refuses is returned unchanged, for it to refuse."""
    text = str(location)
    parsed = urlparse(text)
    if parsed.scheme == "s3":
        return text.rstrip("/")
    if parsed.scheme == "file":
        return os.path.abspath(unquote(parsed.path))
    if parsed.scheme == "" or len(parsed.scheme) == 1:
        return os.path.abspath(os.path.expanduser(text))  # `--out=~/scored`: no shell expanded it
    return text


def open_store(uri: str | Path, single: bool = False) -> Store:
    """`s3://bucket/prefix`, `file:///path` or a plain path. With `single`, a URI naming one video file
    (`lib/a.mp4`, `s3://bucket/lib/a.mp4`) is a store of its folder whose listing is that file alone."""
    text = str(uri)
    parsed = urlparse(text)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ValueError(f"{text}: an S3 URI needs a bucket (s3://bucket/prefix)")
        prefix = parsed.path.strip("/")
        if single and prefix.lower().endswith(VIDEO_EXTENSIONS):
            folder, _, name = prefix.rpartition("/")
            return S3Store(parsed.netloc, folder, only=name)
        return S3Store(parsed.netloc, prefix)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))  # as a `uri()` wrote it: percent-encoded
    elif parsed.scheme in ("", ) or len(parsed.scheme) == 1:  # a plain path (or a Windows drive letter)
        path = Path(text)
    else:
        raise ValueError(f"{text}: unsupported storage URI (use s3://bucket/prefix, file:///path or a path)")
    if single and path.is_file():
        return LocalStore(path.parent, only=path.name)
    return LocalStore(path)
