"""The same object-store suite against a local folder and a real HTTP S3 endpoint."""

import json
import os
import signal
import subprocess
import sys

import pytest

from storage.objects import (LocalStore, ObjectUnreadable, S3Store, StoreError, UnsafeKey, canonical, library_exclusion, locate,
                             open_store)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "library")
    endpoint, bucket = request.getfixturevalue("s3_endpoint"), request.getfixturevalue("bucket")
    return S3Store(bucket, "catalog/one", endpoint_url=endpoint, multipart_mb=5)


def _file(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_upload_list_download_round_trip(store, tmp_path):
    for key, data in [("a.mp4", b"aa"), ("deep/er/b.MOV", b"bbbb"), ("notes.txt", b"x"), ("deep/.hidden.mp4", b"h")]:
        store.upload(_file(tmp_path, "src", data), key)
    listed = {o.key: o for o in store.list()}
    assert set(listed) == {"a.mp4", "deep/er/b.MOV"}               # videos only, recursively
    assert listed["deep/er/b.MOV"].size == 4 and listed["a.mp4"].modified is not None
    local = store.download("deep/er/b.MOV", tmp_path / "work")
    assert local.read_bytes() == b"bbbb"
    assert store.exists("a.mp4") and not store.exists("missing.mp4")
    assert store.content_hash("a.mp4") != store.content_hash("deep/er/b.MOV")


def test_info_says_what_a_listing_says_of_one_object(store, tmp_path):
    store.upload(_file(tmp_path, "src", b"abc"), "deep/a.mp4")
    assert store.info("deep/a.mp4") == {o.key: o for o in store.list()}["deep/a.mp4"]
    assert store.info("deep/a.mp4").size == 3 and store.info("missing.mp4") is None


def test_what_gvmgen_wrote_keeps_its_digest_when_copied_with_another_part_size(s3_endpoint, bucket, tmp_path):
    """A scored output copied elsewhere in S3 (a copy re-parts the object, so its ETag changes) still has
    the digest it was recorded with, the one a local copy of the same bytes has; so has the same content
    uploaded again by another tool, without gvmgen's metadata (its content is read to hash it)."""
    data = os.urandom(11 << 20)                      # three parts of 5 MiB as uploaded, one part as copied
    source = _file(tmp_path, "scored.mp4", data)
    store = S3Store(bucket, "scored", endpoint_url=s3_endpoint, multipart_mb=5)
    store.upload(source, "a.mp4")
    store.client.copy_object(Bucket=bucket, Key="moved/a.mp4", CopySource={"Bucket": bucket, "Key": "scored/a.mp4"})
    moved = S3Store(bucket, "moved", endpoint_url=s3_endpoint)
    assert moved.info("a.mp4").etag != store.info("a.mp4").etag
    local = LocalStore(tmp_path)
    assert moved.digest(moved.info("a.mp4")) == store.digest(store.info("a.mp4")) == local.digest(local.info("scored.mp4"))
    store.client.put_object(Bucket=bucket, Key="scored/theirs.mp4", Body=data)
    assert store.digest(store.info("theirs.mp4")) == local.digest(local.info("scored.mp4"))
    store.client.put_object(Bucket=bucket, Key="scored/other.mp4", Body=data[:-1] + b"x")
    assert store.digest(store.info("other.mp4")) != local.digest(local.info("scored.mp4"))


@pytest.mark.parametrize("key", ["../escape.mp4", "/etc/passwd", "a/../../b.mp4", "a\\..\\b.mp4", ""])
def test_a_key_that_leaves_the_store_is_refused(store, tmp_path, key):
    with pytest.raises(UnsafeKey):
        store.upload(_file(tmp_path, "src", b"x"), key)
    with pytest.raises(UnsafeKey):
        store.download(key, tmp_path / "work")
    assert not (tmp_path / "escape.mp4").exists()


def test_a_symlink_out_of_a_local_store_is_refused(tmp_path):
    (tmp_path / "library").mkdir()
    (tmp_path / "secret.mp4").write_bytes(b"s")
    (tmp_path / "library" / "link.mp4").symlink_to(tmp_path / "secret.mp4")
    with pytest.raises(UnsafeKey):
        LocalStore(tmp_path / "library").download("link.mp4", tmp_path / "work")


_UPLOADER = """
import shutil, sys, threading
from storage.objects import LocalStore, S3Store
kind, where, source = sys.argv[1], sys.argv[2], sys.argv[3]

def midway(*_, **__):   # part of the file is written: the parent kills the upload here, never by luck
    print("midway", flush=True)
    threading.Event().wait()

if kind == "local":
    store = LocalStore(where)
    def one_chunk(src, dst, length):
        dst.write(src.read(length))
        dst.flush()
        midway()
    shutil.copyfileobj = one_chunk
else:
    endpoint, bucket = where.split("|")
    store = S3Store(bucket, "catalog/one", endpoint_url=endpoint, multipart_mb=5)
    store.client.meta.events.register("after-call.s3.UploadPart", midway)
store.upload(source, "big.mp4")
"""


def test_an_upload_killed_midway_leaves_no_visible_object(store, tmp_path):
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.write(os.urandom(1 << 20) * 300)                          # 300 MB: well over one multipart part
    if isinstance(store, LocalStore):
        where, kind = str(store.root), "local"
    else:
        where, kind = f"{store.client.meta.endpoint_url}|{store.bucket}", "s3"
    proc = subprocess.Popen([sys.executable, "-c", _UPLOADER, kind, where, str(big)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "midway\n" and _upload_started(store), "the upload never started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not store.exists("big.mp4")
    assert [o.key for o in store.list()] == []


def _upload_started(store) -> bool:
    if isinstance(store, LocalStore):
        return store.root.exists() and any(".partial" in p.name for p in store.root.iterdir())
    uploads = store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    return bool(uploads)


def test_credentials_never_show(s3_endpoint, bucket, tmp_path, caplog):
    """Not in the store's repr, its errors (message, repr, the whole traceback) or any log record, down to
    botocore's DEBUG logs of each request, across every operation a run makes."""
    import logging
    import traceback

    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    caplog.set_level(logging.DEBUG)
    store = S3Store(bucket, "p", endpoint_url=s3_endpoint)
    store.upload(_file(tmp_path, "a.mp4", b"video"), "a.mp4")
    listed = [o.key for o in store.list()]
    store.download("a.mp4", tmp_path / "work")
    digest = store.content_hash("a.mp4")
    errors = []
    for action in (lambda: store.download("missing.mp4", tmp_path), lambda: store.content_hash("missing.mp4"),
                   lambda: S3Store("no-such-bucket", "p", endpoint_url=s3_endpoint).upload(tmp_path / "a.mp4", "b.mp4")):
        with pytest.raises(Exception) as err:
            action()
        errors.append(err.value)
    assert listed == ["a.mp4"] and digest and len(caplog.records) > 10       # botocore did log the requests
    shown = [repr(store), store.uri("a.mp4"), caplog.text, *(str(e) for e in errors), *(repr(e) for e in errors),
             *("".join(traceback.format_exception(e)) for e in errors)]
    assert not [text for text in shown if secret in text]


def test_open_store_understands_every_uri_form(tmp_path):
    assert isinstance(open_store(tmp_path), LocalStore)
    assert open_store(f"file://{tmp_path}").root == tmp_path.resolve()
    s3 = open_store("s3://my-bucket/some/prefix/")
    assert (s3.bucket, s3.prefix) == ("my-bucket", "some/prefix")
    with pytest.raises(ValueError, match="unsupported"):
        open_store("ftp://host/x")


def test_checking_that_an_output_can_be_written_leaves_no_folder_behind(tmp_path):
    LocalStore(tmp_path / "out" / "deep").check_writable()
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "there").mkdir()
    LocalStore(tmp_path / "there").check_writable()
    assert [p.name for p in tmp_path.iterdir()] == ["there"] and list((tmp_path / "there").iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="file: exists and is not a folder"):
        LocalStore(tmp_path / "file").check_writable()


def test_a_location_is_recorded_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert canonical("lib") == canonical("./lib/") == canonical(tmp_path / "lib") == str(tmp_path / "lib")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert canonical("~/scored") == str(tmp_path / "home" / "scored") == str(open_store("~/scored").root)
    assert canonical((tmp_path / "a b" / "lib").as_uri()) == str(tmp_path / "a b" / "lib")
    assert canonical("s3://bucket/lib/") == "s3://bucket/lib" and canonical("ftp://host/x") == "ftp://host/x"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_recorded_uri_leads_back_to_its_object(where, tmp_path, monkeypatch, request):
    """What the database keeps of an output is its URI; a copy or an evaluation finds the file again from
    it, whatever the folder's and the file's names (a file URI is percent-encoded, an S3 one is not)."""
    if where == "local":
        store = LocalStore(tmp_path / "Post Prod" / "50% done")
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", request.getfixturevalue("s3_endpoint"))
        store = open_store(f"s3://{request.getfixturevalue('bucket')}/Post Prod/50% done")
    for i, key in enumerate(["a b.mp4", "50%off.mp4", "q?#x.mp4", "a:b.mp4", "deep/été ü.flac"]):
        uri = store.upload(_file(tmp_path, "src", bytes([i]) * 3), key)
        found, found_key = locate(uri)
        assert found.exists(found_key) and found.download(found_key, tmp_path / "work").read_bytes() == bytes([i]) * 3
        assert found.uri(found_key) == uri


_PEAK_LISTINGS = """
import itertools, json, sys, tracemalloc
from storage.objects import S3Store
store = S3Store(sys.argv[2], "lib", endpoint_url=sys.argv[1])

def peak_listing(n):
    tracemalloc.start()
    count = sum(1 for _ in itertools.islice(store.list(), n))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return count, peak

print(json.dumps([peak_listing(2_000), peak_listing(None)]))
"""


@pytest.mark.slow
def test_listing_five_thousand_objects_keeps_memory_bounded(s3_endpoint, bucket):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for i in range(5_000):
        client.put_object(Bucket=bucket, Key=f"lib/{i // 100:03d}/clip-{i:05d}.mp4", Body=b"")
    # measured in a process of its own: tracemalloc counts every thread's allocations, and this one runs
    # the S3 server (and, after flow tests, Prefect's threads)
    measured = subprocess.run([sys.executable, "-c", _PEAK_LISTINGS, s3_endpoint, bucket], capture_output=True, text=True)
    assert measured.returncode == 0, measured.stderr[-2000:]
    (two_pages, small), (everything, large) = json.loads(measured.stdout)
    assert (two_pages, everything) == (2_000, 5_000)
    assert large < 1.5 * small   # a page at a time: 2.5 times the objects, not 2.5 times the memory


def test_an_output_may_lie_inside_the_library_but_never_hold_it(tmp_path):
    """Inside: its folder is left out of the listing. Holding it: a scored video of key `p/a.mp4` would
    land on the library's own `p/a.mp4`, refused before any work; a single video's parent folder is fine
    (its one scored video lands beside, never on it)."""
    (tmp_path / "lib" / "p").mkdir(parents=True)
    (tmp_path / "lib" / "p" / "a.mp4").write_bytes(b"v")
    assert library_exclusion(str(tmp_path / "lib"), str(tmp_path / "lib" / "scored")) == "scored/"
    assert library_exclusion(str(tmp_path / "lib"), str(tmp_path / "elsewhere")) is None
    assert library_exclusion(str(tmp_path / "lib" / "p" / "a.mp4"), str(tmp_path)) is None
    for library, output in ((tmp_path / "lib" / "p", tmp_path / "lib"), (tmp_path / "lib", tmp_path)):
        with pytest.raises(ValueError, match=f"^{output}: holds the library {library}: "):
            library_exclusion(str(library), str(output))
    with pytest.raises(ValueError, match="^s3://lib: holds the library s3://lib/p: "):
        library_exclusion("s3://lib/p", "s3://lib/")
    assert library_exclusion("s3://lib/p", "s3://other") is None


def test_a_store_that_fails_as_a_whole_is_named_in_one_line(s3_endpoint, bucket, free_port, monkeypatch):
    """No such bucket, an endpoint that cannot be reached: StoreError (the store's fault, never a video's),
    naming the store; a single video that is not there is that object's (ObjectUnreadable)."""
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(StoreError, match=r"^s3://no-such-bucket/clips: no such bucket \(no-such-bucket\)$"):
        list(S3Store("no-such-bucket", "clips", endpoint_url=s3_endpoint).list())
    with pytest.raises(StoreError, match=r"^s3://no-such-bucket: no such bucket"):
        S3Store("no-such-bucket", endpoint_url=s3_endpoint).check_writable()
    with pytest.raises(ObjectUnreadable, match=rf"^s3://{bucket}/clips/gone.mp4: cannot be read \(404\)$"):
        list(S3Store(bucket, "clips", endpoint_url=s3_endpoint, only="gone.mp4").list())   # the object's fault
    nowhere = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(StoreError, match=rf"^s3://{bucket}: the endpoint cannot be reached \({nowhere}/?\)$"):
        list(S3Store(bucket, endpoint_url=nowhere).list())
