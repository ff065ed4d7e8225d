"""Failures an operator can trust: the infrastructure's are never blamed on a video, interruptions
hand the work back, and first use by several processes at once is safe. Real services throughout:
the command line in its own process, moto's S3 server over HTTP, SQLite, Prefect's engine."""

import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

NAMES = ["counter", "delayed_start", "fades"]


def _library(fixtures, folder, names=NAMES):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(fixtures / "video" / f"{name}.mp4", folder / f"{name}.mp4")
    return folder


def _outputs_per_video():
    from storage.db import connect
    from storage.models import Output, Video

    with connect()() as session:
        return dict(session.execute(select(Video.key, func.count(Output.id)).outerjoin(Output).group_by(Video.key)).all())


def _failed_jobs_and_errors():
    from storage.db import connect
    from storage.models import Job, VideoError

    with connect()() as session:
        return (session.scalar(select(func.count()).select_from(Job).where(Job.status == "failed")),
                session.scalar(select(func.count()).select_from(VideoError)))


def _wait_for(condition, seconds=900, what="the condition"):  # a bound for a hang, not a speed
    deadline = time.time() + seconds
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _scratch_in(tmp_path) -> dict:
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return {"TMPDIR": str(tmp_path / "tmp")}


def _scratch_left(tmp_path) -> list[str]:
    return [p.name for p in (tmp_path / "tmp").glob("gvmgen-*")]


@pytest.mark.slow
def test_missing_weights_stop_the_run_at_once_and_blame_no_video(gvmgen, fixtures, tmp_path):
    library = _library(fixtures, tmp_path / "library")
    missing = gvmgen("score", library, "--out", tmp_path / "scored" / "deep", "--model", "small")
    assert missing.returncode == 2, missing.stderr
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and "openai/clip-vit-large-patch14-336" in lines[0] and "weights fetch" in lines[0]
    assert _failed_jobs_and_errors() == (0, 0)
    assert not (tmp_path / "scored").exists()     # nothing left behind, not even the folder

    loads = gvmgen("score", library, "--out", tmp_path / "scored", "--model", "tiny", "--json")
    assert loads.returncode == 0, loads.stderr
    assert json.loads(loads.stdout)["scored"] == 3
    assert _outputs_per_video() == {f"{n}.mp4": 1 for n in NAMES}


@pytest.mark.slow
def test_the_store_going_down_leaves_videos_pending_and_a_rerun_finishes(gvmgen, fixtures, tmp_path, free_port,
                                                                          monkeypatch, recorded_outputs):
    import boto3
    from moto.server import ThreadedMotoServer

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "outage-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "outage-Secret-7d1e9c")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="outage")
    names = NAMES + ["testvideo"]
    for name in names:
        client.upload_file(str(fixtures / "video" / f"{name}.mp4"), "outage", f"library/{name}.mp4")
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_MAX_ATTEMPTS": "2"}
    args = ("score", "s3://outage/library", "--out", "s3://outage/scored", "--batch-videos", "1", "--json")
    try:
        first = gvmgen(*args, env=env, background=True)
        _wait_for(lambda: recorded_outputs() >= 1, what="the first video's output")
        server.stop()                                         # the endpoint goes down mid-run
        first_stdout, stderr = first.communicate(timeout=600)
        assert first.returncode == 2, stderr
        assert stderr.strip().startswith("error: ") and "pending for the next run" in stderr
        assert _failed_jobs_and_errors() == (0, 0)          # no video blamed
        done = {k for k, n in _outputs_per_video().items() if n}
        assert 1 <= len(done) < len(names)

        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()                                        # the endpoint is back
        second = gvmgen(*args, env=env)
        assert second.returncode == 0, second.stderr
        assert json.loads(second.stdout)["scored"] == len(names) - len(done)
        assert _outputs_per_video() == {f"{n}.mp4": 1 for n in names}
        keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket="outage", Prefix="scored/")["Contents"])
        assert keys == sorted(f"scored/{n}.{ext}" for n in names for ext in ("mp4", "flac", "report.png"))
        # The credentials reached nothing either run left behind, failing or not: their output, and every file
        # under GVMGEN_HOME (logs/prefect.log, the database with runs.parameters and the errors, Prefect's own
        # database with the flow runs' parameters, their artifacts and their logs).
        secret = os.environ["AWS_SECRET_ACCESS_KEY"]
        home = Path(os.environ["GVMGEN_HOME"])
        assert (home / "logs" / "prefect.log").stat().st_size > 0 and (home / "gvmgen.db").is_file()
        assert (home / "prefect" / "prefect.db").is_file()
        assert secret not in first_stdout + stderr + second.stdout + second.stderr
        assert [str(p) for p in home.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()] == []
    finally:
        server.stop()


@pytest.mark.slow
def test_an_unsafe_key_fails_alone_and_a_300_character_name_is_scored(prefect_engine, fixtures, monkeypatch, s3_endpoint, bucket):
    import boto3

    from flows.score_catalog import VideosFailed, score_catalog

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.put_object(Bucket=bucket, Key="library/counter.mp4", Body=(fixtures / "video" / "counter.mp4").read_bytes())
    client.put_object(Bucket=bucket, Key="library/../escape.mp4", Body=(fixtures / "video" / "fades.mp4").read_bytes())
    long = "l" * 296  # a 300-character file name: longer than a local file name may be
    client.put_object(Bucket=bucket, Key=f"library/{long}.mp4", Body=(fixtures / "video" / "delayed_start.mp4").read_bytes())
    with pytest.raises(VideosFailed) as failed:
        score_catalog(f"s3://{bucket}/library", f"s3://{bucket}/scored", model="tiny")
    summary = failed.value.summary
    assert (summary["scored"], summary["failed"]) == (2, 1)
    (failure,) = summary["failures"]
    assert failure["video"] == "../escape.mp4" and "outside the store" in failure["cause"]
    keys = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="scored/")["Contents"])
    assert keys == ["scored/counter.flac", "scored/counter.mp4", "scored/counter.report.png",
                    f"scored/{long}.flac", f"scored/{long}.mp4", f"scored/{long}.report.png"]


@pytest.mark.slow
def test_sigterm_hands_the_run_back_and_an_immediate_rerun_finishes(gvmgen, fixtures, tmp_path, recorded_outputs):
    from storage.db import connect
    from storage.models import Job, Output, Run, Video

    library, out = _library(fixtures, tmp_path / "library"), tmp_path / "scored"
    args = ("score", library, "--out", out, "--batch-videos", "1", "--json")
    first = gvmgen(*args, background=True, env=_scratch_in(tmp_path))
    # a video recorded as scored (its mp4 alone is not enough: one uploaded but not yet recorded when the
    # signal lands is, by design, scored again)
    _wait_for(lambda: recorded_outputs(), what="the first scored video")
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 143 and "Traceback" not in stderr, stderr
    with pytest.raises(ProcessLookupError):                 # nothing it started is left running
        os.killpg(first.pid, 0)
    with connect()() as session:
        run = session.scalars(select(Run)).one()
        held = session.scalar(select(func.count()).select_from(Job).where(Job.owner.is_not(None)))
        finished = set(session.scalars(select(Video.key).join(Output)))
    assert (run.status, run.cause) == ("interrupted", "interrupted (SIGTERM)") and held == 0 and finished
    assert run.scored == len(finished)      # recorded ones, even one its flow had not yet heard of
    assert _scratch_left(tmp_path) == []    # the downloads and frames of the videos in flight: removed
    written = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name.split(".")[0] + ".mp4" in finished}

    second = gvmgen(*args)                                  # at once: no waiting for leases
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert summary["scored"] + summary["skipped"] == len(NAMES) and summary["skipped"] == len(finished)
    assert _outputs_per_video() == {f"{n}.mp4": 1 for n in NAMES}
    assert {n: t for n, t in ((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) if n in written} == written


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_interrupts_the_run_at_once(gvmgen, fixtures, tmp_path, recorded_outputs):
    """A terminal's Ctrl-C goes to the command's whole process group. Prefect's temporary server, its child,
    once died with it, and the interrupted run's last calls to it retried for minutes before exiting 2.
    Now: exit 130 in seconds with one line, the run marked interrupted, and the server stopped too."""
    from storage.db import connect
    from storage.models import Run

    library, out = _library(fixtures, tmp_path / "library"), tmp_path / "scored"
    first = gvmgen("score", library, "--out", out, "--batch-videos", "1", background=True, env=_scratch_in(tmp_path))
    _wait_for(lambda: recorded_outputs(), what="the first scored video")
    children = Path(f"/proc/{first.pid}/task/{first.pid}/children").read_text().split()
    servers = [int(c) for c in children if "uvicorn" in Path(f"/proc/{c}/cmdline").read_text()]
    assert servers, children
    signalled = time.monotonic()
    os.killpg(first.pid, signal.SIGINT)
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 130 and time.monotonic() - signalled < 60, (first.returncode, stderr)
    assert stderr.strip().splitlines()[-1] == "error: interrupted" and "Traceback" not in stderr, stderr
    _wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in servers), seconds=10,
              what="Prefect's temporary server to stop")
    with connect()() as session:
        run = session.scalars(select(Run)).one()
    assert (run.status, run.cause) == ("interrupted", "interrupted (Ctrl-C)")
    assert _scratch_left(tmp_path) == []
    assert _failed_jobs_and_errors() == (0, 0)      # the Ctrl-C that reached ffmpeg too is blamed on no video


@pytest.mark.slow
def test_sigusr1_prints_where_every_thread_is_and_the_run_goes_on(gvmgen, fixtures, tmp_path, recorded_outputs):
    """For a run that seems stuck: `kill -USR1 PID` shows where it waits, and changes nothing else."""
    library, out = _library(fixtures, tmp_path / "library"), tmp_path / "scored"
    run = gvmgen("score", library, "--out", out, "--batch-videos", "1", "--json", background=True)
    _wait_for(lambda: recorded_outputs(), what="the first scored video")
    run.send_signal(signal.SIGUSR1)
    stdout, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr
    assert "Thread 0x" in stderr and "in score_catalog" in stderr, stderr   # the flow's own frame among them
    assert json.loads(stdout)["scored"] == len(NAMES)


@pytest.mark.slow
def test_two_processes_on_a_fresh_home(gvmgen, fixtures, tmp_path):
    library, out = _library(fixtures, tmp_path / "library"), tmp_path / "scored"
    both = [gvmgen("score", library, "--out", out, "--json", background=True) for _ in range(2)]
    results = [(p.communicate(timeout=600), p.returncode) for p in both]
    for (stdout, stderr), code in results:
        assert code == 0 and "Traceback" not in stderr, stderr
    summaries = [json.loads(stdout) for (stdout, _), _ in results]
    assert summaries[0]["run"] != summaries[1]["run"]       # each reports its own run
    assert summaries[0]["scored"] + summaries[1]["scored"] == len(NAMES)
    assert _outputs_per_video() == {f"{n}.mp4": 1 for n in NAMES}


def test_infrastructure_failures_leave_a_video_pending_until_the_third_attempt():
    """How each failure is classified and recorded, on a real database: a media error is the video's
    at once; an infrastructure error releases it, twice, and the third time fails it with the count."""
    from datetime import datetime, timezone

    from flows.score_catalog import RunContext, fail
    from gvmgen.media.probe import MediaError
    from storage import repository as repo
    from storage.db import connect
    from storage.objects import ObjectInfo

    with connect()() as session:
        cat = repo.catalog(session, "lib", "/lib")
        model = repo.model_version(session, "tiny", "preset:tiny")
        run = repo.start_run(session, cat, model, {}, {}, worker="w")
        ctx = RunContext(run.id, model.id, "/lib", "/out", "tiny", {}, False, False, 60, owner="w",
                         sample_rate=32000, image_size=None)
        now = datetime.now(timezone.utc)
        flaky, bad = (repo.register_video(session, cat, ObjectInfo(k, 1, None, now), f"file:///lib/{k}", f"sha256:{k}")[0]
                      for k in ("flaky.mp4", "bad.mp4"))
        outcomes = []
        for _ in range(3):
            job = repo.claim(session, flaky, model, repo.settings_hash({}), owner="w")
            outcomes.append(fail(session, ctx, "w", flaky, job, "upload", ConnectionError("endpoint unreachable"), 0.0))
        assert [r["status"] for r in outcomes] == ["pending", "pending", "failed"]
        assert outcomes[0]["cause"] == "infrastructure (upload): ConnectionError: endpoint unreachable"
        assert outcomes[2]["cause"] == "gave up after 3 attempts: ConnectionError: endpoint unreachable"

        job = repo.claim(session, bad, model, repo.settings_hash({}), owner="w")
        row = fail(session, ctx, "w", bad, job, "prepare", MediaError("/tmp/scratch/x.mp4", "has no video stream"), 0.0)
        assert (row["status"], row["cause"]) == ("failed", "file:///lib/bad.mp4: has no video stream")
        assert repo.claim(session, bad, model, repo.settings_hash({}), owner="w") is None       # not retried
        again = repo.claim(session, bad, model, repo.settings_hash({}), owner="w", retry_failed=True)
        assert again is not None and again.attempts == 1                                         # unless asked
        errors = {e.video_id: e.cause for e, _ in repo.errors(session, run)}
    assert errors == {flaky.id: outcomes[2]["cause"], bad.id: row["cause"]}


@pytest.mark.slow
def test_music_that_cannot_be_decoded_leaves_its_video_pending_and_the_run_ends(prefect_engine, fixtures, tmp_path,
                                                                                 monkeypatch):
    """The codec fails on the last video's music (a CUDA fault, say) after its windows were sampled: that
    video is left pending for the next run, as the infrastructure's fault, the others are scored, and the
    run ends (such a video once fell out of the model's batch while the flow still waited for it)."""
    import threading

    import flows.score_catalog as flow
    from storage.db import connect
    from storage.models import Job

    real, decoded = flow.MusicGenerator.track, []

    def track(generator, composed):
        decoded.append(composed.video.duration)
        if len(decoded) == len(NAMES):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(generator, composed)

    monkeypatch.setattr(flow.MusicGenerator, "track", track)
    outcome = []
    run = threading.Thread(target=lambda: outcome.append(_raised(
        lambda: flow.score_catalog(str(_library(fixtures, tmp_path / "library")), str(tmp_path / "scored"),
                                   model="tiny", batch_videos=3))), daemon=True)
    run.start()
    run.join(timeout=300)
    assert not run.is_alive(), "the run never ended"
    (error,) = outcome
    assert isinstance(error, flow.InfrastructureError) and "1 video(s) left pending" in str(error)
    assert sorted(_outputs_per_video().values()) == [0, 1, 1]
    with connect()() as session:
        assert sorted(j.status for j in session.scalars(select(Job))) == ["done", "done", "pending"]


def _raised(call):
    try:
        call()
    except Exception as e:
        return e
    return None


@pytest.mark.slow
def test_the_nightly_flow_runs_the_catalog_again_after_an_infrastructure_fault_only(prefect_engine, fixtures, tmp_path,
                                                                                      monkeypatch, free_port):
    """A failed video ends the nightly flow after one run (another would fail it again); an object store
    that cannot be reached is tried 1 + NIGHTLY_RETRIES times, each a run of score-catalog of its own."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    from flows import score_catalog as flow

    def runs_of_score_catalog() -> int:
        with get_client(sync_client=True) as client:
            return len(client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["score-catalog"]))))

    monkeypatch.setattr(flow, "NIGHTLY_RETRY_DELAY_S", 0)
    library = tmp_path / "library"
    library.mkdir()
    shutil.copy(fixtures / "video" / "counter.mp4", library / "counter.mp4")
    (library / "broken.mp4").write_text("not a video")
    before = runs_of_score_catalog()
    with pytest.raises(flow.VideosFailed) as failed:
        flow.nightly_score_catalog(str(library), str(tmp_path / "scored"), model="tiny")
    assert (failed.value.summary["scored"], failed.value.summary["failed"]) == (1, 1)
    assert runs_of_score_catalog() == before + 1

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")   # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    for name, value in (("AWS_ACCESS_KEY_ID", "nightly"), ("AWS_SECRET_ACCESS_KEY", "nightly"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    with pytest.raises(Exception, match="^s3://outage/scored: the endpoint cannot be reached") as fault:
        flow.nightly_score_catalog(str(library), "s3://outage/scored", model="tiny")
    assert not isinstance(fault.value, (flow.VideosFailed, ValueError))
    assert runs_of_score_catalog() == before + 1 + 1 + flow.NIGHTLY_RETRIES
