"""score_catalog on a real Prefect engine, the tiny model and the shared fixtures plus two bad files,
from a local folder and from a real HTTP S3 endpoint."""

import json
import logging
import os
import shutil

import pytest


def _library(fixtures) -> dict[str, bytes]:
    video = fixtures / "video"
    data = (video / "testvideo.mp4").read_bytes()
    return {"counter.mp4": (video / "counter.mp4").read_bytes(),
            "nested/delayed.mp4": (video / "delayed_start.mp4").read_bytes(),
            "truncated.mp4": data[: len(data) // 3],
            "notes.mp4": b"this is not a video"}


@pytest.fixture(params=["local", "s3"])
def places(request, fixtures, tmp_path, monkeypatch):
    """(source URI, output URI, a function listing the output keys) with the library in place."""
    files = _library(fixtures)
    if request.param == "local":
        for key, data in files.items():
            (tmp_path / "library" / key).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "library" / key).write_bytes(data)
        out = tmp_path / "scored"
        return str(tmp_path / "library"), str(out), lambda: sorted(
            p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    import boto3

    endpoint, bucket = request.getfixturevalue("s3_endpoint"), request.getfixturevalue("bucket")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # the standard AWS chain, as in production
    client = boto3.client("s3", endpoint_url=endpoint)
    for key, data in files.items():
        client.put_object(Bucket=bucket, Key=f"library/{key}", Body=data)
    return f"s3://{bucket}/library", f"s3://{bucket}/scored", lambda: sorted(
        o["Key"].removeprefix("scored/") for o in client.list_objects_v2(Bucket=bucket, Prefix="scored/").get("Contents", []))


def _latest_artifact(key):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return max(found, key=lambda a: a.created)


def _task_names(run_id: int) -> list[str]:
    """The names of the task runs of our run `run_id`'s flow run, less their suffixes."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from storage.db import connect
    from storage.models import Run

    with connect()() as session:
        flow_run_id = session.get(Run, run_id).flow_run_id
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(t.name.rsplit("-", 1)[0] for t in runs)


def _where_the_secret_shows(secret: str, captured: str) -> list[str]:
    """Every place a run leaves words behind, searched for `secret`: the captured output and logs, every row
    of every table of the database (runs.parameters, the errors' causes, ...), and in Prefect the flow runs'
    parameters and state messages, the task runs' state messages, the artifacts and the logs."""
    from prefect.client.orchestration import get_client
    from sqlalchemy import select

    from storage.db import connect
    from storage.models import Base

    places = {"captured output": captured}
    with connect()() as session:
        for table in Base.metadata.sorted_tables:
            places[f"table {table.name}"] = repr(session.execute(select(table)).all())
    def every(read):
        found, page = [], None
        while page is None or len(page) == 200:
            page = read(limit=200, offset=len(found))
            found += page
        return found

    with get_client(sync_client=True) as client:
        runs = every(client.read_flow_runs)
        places["flow runs"] = repr([(r.name, r.parameters, r.state and r.state.message) for r in runs])
        places["task runs"] = repr([(t.name, t.state and t.state.message) for t in every(client.read_task_runs)])
        places["artifacts"] = repr([(a.key, a.data, a.description) for a in every(client.read_artifacts)])
        places["logs"] = repr([log.message for log in every(client.read_logs)])
    assert runs and places["artifacts"] != "[]"
    return [where for where, text in places.items() if secret in text]


class _Kept(logging.Handler):
    """Keeps the records a logger handles, whatever propagates to the root logger."""

    def __init__(self):
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.slow
def test_good_videos_get_outputs_bad_ones_a_cause_and_a_rerun_scores_nothing(prefect_engine, places, capfd, caplog):
    from sqlalchemy import select

    from flows.score_catalog import VideosFailed, score_catalog
    from storage.db import connect
    from storage.models import Output, VideoError

    source, output, outputs = places
    task_logs = _Kept()
    logging.getLogger("prefect.task_runs").addHandler(task_logs)
    try:
        with pytest.raises(VideosFailed, match="2 of 4 videos failed") as failed:
            score_catalog(source, output, model="tiny")
    finally:
        logging.getLogger("prefect.task_runs").removeHandler(task_logs)
    first = failed.value.summary
    assert (first["scored"], first["failed"], first["skipped"]) == (2, 2, 0)
    assert outputs() == ["counter.flac", "counter.mp4", "counter.report.png",
                         "nested/delayed.flac", "nested/delayed.mp4", "nested/delayed.report.png"]
    with connect()() as session:
        assert len(session.scalars(select(Output)).all()) == 2
        causes = {e.cause for e in session.scalars(select(VideoError))}
    # named by their URI in the library, never by a scratch path
    assert sorted(c.split(": ")[0] for c in causes) == sorted(f"{source}/{k}" if source.startswith("s3://")
                                                               else f"file://{source}/{k}" for k in ("notes.mp4", "truncated.mp4"))
    results = _latest_artifact("score-catalog-results")
    assert sorted((r["video"], r["status"]) for r in json.loads(results.data)) == [
        ("counter.mp4", "scored"), ("nested/delayed.mp4", "scored"), ("notes.mp4", "failed"), ("truncated.mp4", "failed")]
    assert "truncated.mp4" in _latest_artifact("score-catalog-failures").data
    # each failed video logged once, without the empty traceback ("NoneType: None") Prefect would print under it
    failed_tasks = [r for r in task_logs.records if r.getMessage().startswith("Task run failed with state")]
    assert len(failed_tasks) == 2 and all(r.exc_info is None for r in failed_tasks)

    with pytest.raises(VideosFailed) as again:              # they still stand failed: not retried
        score_catalog(source, output, model="tiny")
    second = again.value.summary
    assert (second["scored"], second["failed"], second["failed_earlier"], second["skipped"]) == (0, 0, 2, 2)
    assert "prepare_video" not in _task_names(second["run"])  # settled at once: no task run per video
    if source.startswith("s3://"):   # the S3 credentials (tests/conftest.py's) reached none of it
        out, err = capfd.readouterr()
        assert _where_the_secret_shows(os.environ["AWS_SECRET_ACCESS_KEY"], out + err + caplog.text) == []


@pytest.mark.slow
def test_a_video_whose_scored_copy_was_deleted_is_scored_again(prefect_engine, fixtures, tmp_path):
    """An operator deletes an output folder and runs again: the videos are scored anew, not reported done
    (nor failed for want of the files to copy); a copy still in the run's own output keeps them done; a
    recorded track deleted alone has the video scored again, whole."""
    from sqlalchemy import select

    from flows.score_catalog import score_catalog
    from storage.db import connect
    from storage.models import Output

    library, first, second = tmp_path / "library", tmp_path / "first", tmp_path / "second"
    library.mkdir()
    (library / "counter.mp4").write_bytes((fixtures / "video" / "counter.mp4").read_bytes())
    counts = lambda summary: (summary["scored"], summary["skipped"], summary["failed"])
    assert counts(score_catalog(str(library), str(first), model="tiny")) == (1, 0, 0)
    assert counts(score_catalog(str(library), str(second), model="tiny")) == (0, 1, 0)      # copied
    (first / "counter.flac").unlink()           # the recorded track deleted: scored again, whole, into this output
    assert counts(score_catalog(str(library), str(tmp_path / "third"), model="tiny")) == (1, 0, 0)
    assert sorted(p.name for p in (tmp_path / "third").iterdir()) == ["counter.flac", "counter.mp4", "counter.report.png"]
    shutil.rmtree(first)
    assert counts(score_catalog(str(library), str(second), model="tiny")) == (0, 1, 0)      # its copy is there
    shutil.rmtree(second)
    shutil.rmtree(tmp_path / "third")
    assert counts(score_catalog(str(library), str(second), model="tiny")) == (1, 0, 0)
    assert sorted(p.name for p in second.iterdir()) == ["counter.flac", "counter.mp4", "counter.report.png"]
    with connect()() as session:
        assert [o.video_uri for o in session.scalars(select(Output))] == [(second / "counter.mp4").as_uri()]
    assert counts(score_catalog(str(library), str(second), model="tiny")) == (0, 1, 0)


@pytest.mark.slow
def test_the_same_file_twice_is_scored_once_and_both_get_the_output(prefect_engine, fixtures, tmp_path):
    from sqlalchemy import select

    from flows.score_catalog import score_catalog
    from storage.db import connect
    from storage.models import Output, Run, Video

    # names a file URI percent-encodes: the copy is found again from the recorded URI
    library, out = tmp_path / "Post Prod" / "library", tmp_path / "Post Prod" / "scored"
    (library / "copies").mkdir(parents=True)
    data = (fixtures / "video" / "counter.mp4").read_bytes()
    (library / "counter.mp4").write_bytes(data)
    (library / "copies" / "counter 50%.mp4").write_bytes(data)
    summary = score_catalog(str(library), str(out), model="tiny")
    assert (summary["scored"], summary["skipped"], summary["copied"], summary["failed"]) == (1, 1, 1, 0)
    names = ["counter.flac", "counter.mp4", "counter.report.png"]
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == \
        sorted(names + [f"copies/{n.replace('counter', 'counter 50%')}" for n in names])
    assert (out / "counter.flac").read_bytes() == (out / "copies" / "counter 50%.flac").read_bytes()
    with connect()() as session:
        assert len(session.scalars(select(Output)).all()) == 1
        run = session.get(Run, summary["run"])
        assert (run.scored, run.skipped, run.copied) == (1, 1, 1)   # what runs list shows
        probes = {v.key: (v.duration, v.width, v.fps, [(s.start, s.end) for s in v.shots])
                  for v in session.scalars(select(Video))}
    assert probes["copies/counter 50%.mp4"] == probes["counter.mp4"] and probes["counter.mp4"][0] > 0   # the copy's too
    rows = json.loads(_latest_artifact("score-catalog-results").data)
    assert sorted(r["status"] for r in rows) == ["copied", "scored"]


@pytest.mark.slow
def test_a_scored_copy_is_trusted_only_while_it_is_the_file_gvmgen_wrote(prefect_engine, fixtures, tmp_path):
    """What stands at a video's key in the output is checked, not trusted: a source replaced by a copy
    of another scored file gets that file's scored copy (not the old picture); a duplicate's deleted
    track is copied again; someone else's file written over a scored video fails that video, named,
    until --overwrite scores it again (a track or report likewise); the recorded report deleted has the
    video scored again; an output copied elsewhere is recognised by content."""
    from pathlib import Path

    from sqlalchemy import select

    from flows.score_catalog import VideosFailed, score_catalog
    from storage import repository as repo
    from storage.db import connect
    from storage.models import Job, Output, Video

    library, out = tmp_path / "library", tmp_path / "scored"
    (library / "copies").mkdir(parents=True)
    counter, delayed = ((fixtures / "video" / name).read_bytes() for name in ("counter.mp4", "delayed_start.mp4"))
    (library / "a.mp4").write_bytes(counter)
    (library / "copies" / "a.mp4").write_bytes(counter)
    (library / "b.mp4").write_bytes(delayed)
    counts = lambda summary: (summary["scored"], summary["skipped"], summary["failed"])
    statuses = lambda: dict(sorted((r["video"], r["status"]) for r in json.loads(_latest_artifact("score-catalog-results").data)))
    assert counts(score_catalog(str(library), str(out), model="tiny")) == (2, 1, 0)
    old_b = (out / "b.mp4").read_bytes()

    with connect()() as session:   # whichever of the two copies of a was scored; the other got its copy
        scored = session.scalar(select(Output.video_uri).where(Output.video_uri.like("%/a.mp4")))
    copy = "a" if scored.endswith("/copies/a.mp4") else "copies/a"
    shutil.copyfile(library / "a.mp4", library / "b.mp4")        # b is now a's content, scored before
    (out / f"{copy}.flac").unlink()
    assert counts(score_catalog(str(library), str(out), model="tiny")) == (0, 3, 0)
    assert statuses() == {"b.mp4": "copied", f"{copy}.mp4": "copied",
                          ({"a", "copies/a"} - {copy}).pop() + ".mp4": "skipped"}
    for suffix in (".mp4", ".flac", ".report.png"):
        assert (out / f"b{suffix}").read_bytes() == (out / f"a{suffix}").read_bytes()
    assert (out / "b.mp4").read_bytes() != old_b
    assert (out / "copies" / "a.flac").read_bytes() == (out / "a.flac").read_bytes()
    assert counts(score_catalog(str(library), str(out), model="tiny")) == (0, 3, 0)   # nothing to copy now
    assert set(statuses().values()) == {"skipped"}

    (out / "b.mp4").write_bytes(b"an editor's file, saved over the scored video")
    refused = f"{(out / 'b.mp4').as_uri()} exists and gvmgen did not write it (--overwrite replaces it)"
    with pytest.raises(VideosFailed) as failed:
        score_catalog(str(library), str(out), model="tiny")
    assert failed.value.summary["failures"] == [{"video": "b.mp4", "status": "failed", "cause": refused}]
    with connect()() as session:   # failed in the listing too, though its content is done (under a's key)
        assert [(v.key, e.cause) for v, _, e in repo.videos(session, "failed")] == [("b.mp4", refused)]
    assert (out / "b.mp4").read_bytes().startswith(b"an editor's file")
    assert counts(score_catalog(str(library), str(out), model="tiny", overwrite=True)) == (0, 3, 0)
    assert statuses()["b.mp4"] == "copied" and (out / "b.mp4").read_bytes() == (out / "a.mp4").read_bytes()

    (out / f"{copy}.mp4").unlink()
    (out / scored.rsplit("/scored/", 1)[1]).write_bytes(b"an editor's file, saved over the scored video")
    # the recorded scored video replaced and its copy gone: nothing to copy from, so scored again
    assert counts(score_catalog(str(library), str(out), model="tiny", overwrite=True)) == (1, 2, 0)
    assert (out / "a.mp4").read_bytes() == (out / "copies" / "a.mp4").read_bytes()
    assert (out / "a.flac").read_bytes() == (out / "b.flac").read_bytes()     # scored again alone: the same music

    moved = tmp_path / "moved"                                   # the output copied elsewhere (new times):
    shutil.copytree(out, moved, copy_function=shutil.copyfile)    # recognised by content, nothing redone
    assert counts(score_catalog(str(library), str(moved), model="tiny")) == (0, 3, 0)
    assert set(statuses().values()) == {"skipped"}

    (out / "b.flac").write_bytes(b"an editor's track, saved over b's")     # beside a scored video: b fails,
    with pytest.raises(VideosFailed) as failed:                            # until --overwrite puts its track back
        score_catalog(str(library), str(out), model="tiny")
    assert failed.value.summary["failures"] == [{"video": "b.mp4", "status": "failed", "cause": (
        f"{(out / 'b.flac').as_uri()} exists and gvmgen did not write it (--overwrite replaces it)")}]
    assert counts(score_catalog(str(library), str(out), model="tiny", overwrite=True)) == (0, 3, 0)
    assert (out / "b.flac").read_bytes() == (out / "a.flac").read_bytes()

    with connect()() as session:   # scored again above: under whichever of a's two keys took it
        scored = session.scalar(select(Output.video_uri).where(Output.video_uri.like("%/a.mp4")))
    recorded_report = out / Path(scored.rsplit("/scored/", 1)[1]).with_suffix(".report.png")
    recorded_report.unlink()                                      # nowhere to copy it from: scored again
    assert counts(score_catalog(str(library), str(out), model="tiny")) == (1, 2, 0)
    assert recorded_report.is_file()

    with connect()() as session:   # a's content was scored last into one of its two keys
        recorded = session.scalar(select(Output.video_uri).where(Output.video_uri.like("%/a.mp4"))).rsplit("/scored/")[1]
    other = "copies/a.mp4" if recorded == "a.mp4" else "a.mp4"
    (library / recorded).write_bytes((fixtures / "video" / "fades.mp4").read_bytes())   # that key's source edited:
    assert counts(score_catalog(str(library), str(out), model="tiny")) == (1, 2, 0)    # scored over its old copy
    (out / "b.mp4").unlink()          # b's content (a's old one) was recorded there: b is scored again, not
    assert counts(score_catalog(str(library), str(out), model="tiny")) == (1, 2, 0)    # given the edited video's
    assert (out / "b.flac").read_bytes() == (out / other).with_suffix(".flac").read_bytes() != \
        (out / recorded).with_suffix(".flac").read_bytes()

    (library / "c.mp4").write_bytes((fixtures / "video" / "testvideo.mp4").read_bytes())   # new, and an editor's
    (out / "c.report.png").write_bytes(b"an editor's picture")                             # file beside its key
    refused = f"{(out / 'c.report.png').as_uri()} exists and gvmgen did not write it (--overwrite replaces it)"
    for night in range(2):   # failed everywhere, each night, and never counted as a try of the video
        with pytest.raises(VideosFailed) as failed:
            score_catalog(str(library), str(out), model="tiny")
        assert failed.value.summary["failures"][0]["cause"] == refused
        with connect()() as session:
            assert [(v.key, e.cause) for v, _, e in repo.videos(session, "failed")] == [("c.mp4", refused)]
            job = session.scalar(select(Job).join(Video, Video.content_hash == Job.content_hash).where(Video.key == "c.mp4"))
            assert (job.status, job.attempts) == ("pending", 0)
    assert (out / "c.report.png").read_bytes() == b"an editor's picture" and not (out / "c.mp4").exists()
    (out / "c.report.png").unlink()                # moved away: the next run scores c, no --retry-failed needed
    assert counts(score_catalog(str(library), str(out), model="tiny")) == (1, 3, 0)
    with connect()() as session:
        assert repo.videos(session, "failed") == [] and (out / "c.mp4").is_file()


@pytest.mark.slow
def test_a_copy_of_a_file_that_fails_fails_with_it(prefect_engine, tmp_path):
    """Two keys of one bad file: its content is tried once, and both videos are failed with the cause in
    this run (not the second skipped, as a duplicate waiting for a copy, nor failed earlier)."""
    from flows.score_catalog import VideosFailed, score_catalog

    library = tmp_path / "library"
    (library / "copies").mkdir(parents=True)
    for key in ("notes.mp4", "copies/notes.mp4"):
        (library / key).write_bytes(b"this is not a video")
    with pytest.raises(VideosFailed) as failed:
        score_catalog(str(library), str(tmp_path / "out"), model="tiny")
    summary = failed.value.summary
    assert (summary["failed"], summary["failed_earlier"], summary["skipped"], summary["pending"]) == (2, 0, 0, 0)
    assert [f["video"] for f in summary["failures"]] == ["copies/notes.mp4", "notes.mp4"]
    first, copy = sorted((f["cause"] for f in summary["failures"]), key=len)   # one failed, one is its copy
    assert "not a readable media file" in first and copy == f"the same content as another file, which failed: {first}"

    other = tmp_path / "other"                 # the same file in another catalog: failed earlier, and why
    other.mkdir()
    (other / "memo.mp4").write_bytes(b"this is not a video")
    with pytest.raises(VideosFailed) as failed:
        score_catalog(str(other), str(tmp_path / "out2"), model="tiny")
    (earlier,) = failed.value.summary["failures"]
    assert (earlier["video"], earlier["status"]) == ("memo.mp4", "failed earlier")
    assert earlier["cause"] == f"the same content as another file, which failed: {first}"


@pytest.mark.slow
def test_a_container_gvmgen_cannot_write_back_fails_before_its_video_is_read(prefect_engine, fixtures, tmp_path):
    """An .mpg (a container the muxer does not write) fails with the reason, never read; the rest is scored."""
    from sqlalchemy import select

    from flows.score_catalog import VideosFailed, score_catalog
    from storage.db import connect
    from storage.models import Video

    library = tmp_path / "library"
    library.mkdir()
    for name in ("counter.mp4", "program.mpg"):
        (library / name).write_bytes((fixtures / "video" / "counter.mp4").read_bytes() + name.encode())
    with pytest.raises(VideosFailed) as failed:
        score_catalog(str(library), str(tmp_path / "out"), model="tiny")
    assert (failed.value.summary["scored"], failed.value.summary["failed"]) == (1, 1)
    (failure,) = failed.value.summary["failures"]
    assert failure["cause"].startswith(f"{(library / 'program.mpg').as_uri()}: not a video container gvmgen writes")
    with connect()() as session:
        probed = dict(session.execute(select(Video.key, Video.duration)).tuples().all())
    assert probed["program.mpg"] is None and probed["counter.mp4"] > 0          # never probed, let alone decoded


@pytest.mark.slow
def test_two_videos_whose_tracks_would_share_a_name_are_told_apart(prefect_engine, fixtures, tmp_path):
    """`a.mp4` beside `a.mov` would both write `a.flac` and `a.report.png`: the one scored first keeps
    them, and the other fails with the reason, in every run, until renamed (before, each run rescored
    one of them over the other's track)."""
    import subprocess

    from flows.score_catalog import VideosFailed, score_catalog

    library, out = tmp_path / "library", tmp_path / "out"
    library.mkdir()
    shutil.copy(fixtures / "video" / "counter.mp4", library / "a.mp4")
    assert score_catalog(str(library), str(out), model="tiny")["scored"] == 1
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(fixtures / "video" / "delayed_start.mp4"), "-c", "copy",
                    str(library / "a.mov")], check=True)                      # added later, sorts first
    for _ in range(2):
        with pytest.raises(VideosFailed) as failed:
            score_catalog(str(library), str(out), model="tiny")
        summary = failed.value.summary
        assert (summary["scored"], summary["skipped"], summary["failed"]) == (0, 1, 1)
        assert summary["failures"] == [{"video": "a.mov", "status": "failed", "cause": (
            f"{(library / 'a.mov').as_uri()}: its track and report would overwrite those of a.mp4 (a.flac, "
            "a.report.png in the output): rename one of the two")}]
    (library / "a.mov").rename(library / "a-master.mov")
    assert score_catalog(str(library), str(out), model="tiny")["scored"] == 1


def test_a_nightly_run_reads_only_the_files_written_since(database_url, tmp_path, monkeypatch):
    """A local library's files are hashed when first seen and when their size or modification time
    changed, not every night: a file rewritten in place with its old time and size keeps its hash, a
    touched one is read again (and, changed, scored again)."""
    import hashlib

    from flows.score_catalog import list_library, register_videos
    from storage.db import connect, upgrade
    from storage.models import Video

    monkeypatch.setenv("GVMGEN_DATABASE_URL", database_url)
    upgrade(database_url)
    library = tmp_path / "library"
    library.mkdir()
    a = library / "a.mp4"

    def registered() -> str:
        (video_id,) = register_videos.fn(str(library), "library", list_library.fn(str(library)))
        with connect()() as session:
            return session.get(Video, video_id).content_hash

    def rewrite(data: bytes, keep_time: bool) -> None:
        before = a.stat().st_mtime_ns
        a.write_bytes(data)
        os.utime(a, ns=(before, before) if keep_time else (before + 10**9, before + 10**9))

    def sha(data: bytes) -> str:
        return "sha256:" + hashlib.sha256(data).hexdigest()

    a.write_bytes(b"first take")
    assert registered() == sha(b"first take")
    rewrite(b"other take", keep_time=True)          # the same size and time: not read
    assert registered() == sha(b"first take")
    rewrite(b"other take", keep_time=False)         # touched: read, and it changed
    assert registered() == sha(b"other take")
    rewrite(b"other take", keep_time=False)         # touched alone: read, the same; its new time recorded
    assert registered() == sha(b"other take")
    rewrite(b"third take", keep_time=True)          # so this is not read
    assert registered() == sha(b"other take")


@pytest.mark.slow
def test_a_run_that_fails_after_its_videos_is_recorded_as_failed(prefect_engine, fixtures, tmp_path):
    """Whatever stops a run once it is recorded ends its row as failed with the cause: here the copy of a
    duplicate, whose output folder is blocked by a file. (Such a run once stayed `running` for ever.)"""
    from flows.score_catalog import score_catalog
    from storage.db import connect
    from storage.models import Run

    library, out = tmp_path / "library", tmp_path / "scored"
    data = (fixtures / "video" / "counter.mp4").read_bytes()
    for folder in ("a", "b"):
        (library / folder).mkdir(parents=True)
        (library / folder / "counter.mp4").write_bytes(data)
    score_catalog(str(library), str(out), model="tiny")
    copied = next(r["video"] for r in json.loads(_latest_artifact("score-catalog-results").data) if r["status"] == "copied")
    blocked = out / copied.split("/")[0]
    shutil.rmtree(blocked)
    blocked.write_text("not a folder")
    with pytest.raises(OSError):
        score_catalog(str(library), str(out), model="tiny")
    with connect()() as session:
        run = session.query(Run).order_by(Run.id.desc()).first()
    assert run.status == "failed" and run.finished_at and blocked.name in run.cause, (run.status, run.cause)


@pytest.mark.slow
def test_an_output_inside_the_library_is_never_a_source_even_once_another_is_chosen(prefect_engine, fixtures, tmp_path):
    from flows.score_catalog import score_catalog

    library = tmp_path / "library"
    library.mkdir()
    (library / "counter.mp4").write_bytes((fixtures / "video" / "counter.mp4").read_bytes())
    assert score_catalog(str(library), str(library / "scored"), model="tiny")["scored"] == 1
    assert (library / "scored" / "counter.mp4").is_file()
    elsewhere = score_catalog(str(library), str(tmp_path / "elsewhere"), model="tiny")
    assert (elsewhere["scored"], elsewhere["skipped"]) == (0, 1)          # counter.mp4 copied, not scored again
    assert sorted(p.name for p in (tmp_path / "elsewhere").iterdir()) == ["counter.flac", "counter.mp4",
                                                                          "counter.report.png"]


@pytest.mark.slow
def test_a_flow_run_prints_its_threads_stacks_on_sigusr1_and_goes_on(prefect_engine, tmp_path, capfd):
    """As a Prefect worker's flow run, which the command line's handler does not reach. The run also
    shortens the GIL's switch interval for its process (launches wait less beside Python threads)."""
    import os
    import signal
    import sys
    import threading

    from flows.score_catalog import GIL_SWITCH_S, score_catalog

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers belong to the main thread")
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # whatever an earlier test in this process set
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.005)                   # Python's default, whatever an earlier test left
    (tmp_path / "library").mkdir()
    try:
        score_catalog(str(tmp_path / "library"), str(tmp_path / "out"), model="tiny")
        assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_S)
    finally:
        sys.setswitchinterval(interval)
    capfd.readouterr()
    os.kill(os.getpid(), signal.SIGUSR1)            # unhandled, this would end the process
    err = capfd.readouterr().err
    assert "MainThread" in err and "in test_a_flow_run_prints_its_threads_stacks" in err


@pytest.mark.parametrize("batch_videos, lease_s, named", [(0, 900, "batch_videos"), (65, 900, "batch_videos"),
                                                          (4, 0.5, "lease_s"), (4, 8 * 24 * 3600, "lease_s")])
def test_a_deployments_parameters_out_of_range_are_refused_before_any_work(tmp_path, batch_videos, lease_s, named):
    """The command line refuses them as it reads its options; a deployment's parameters meet this check."""
    from flows.score_catalog import preflight

    with pytest.raises(ValueError, match=rf"^{named} \(--[a-z-]+\) must lie between"):
        preflight(str(tmp_path / "nowhere"), str(tmp_path / "out"), "tiny", None, batch_videos, lease_s)
    assert not (tmp_path / "out").exists()
