"""Sharing the work: several flow runs on one catalog, the `gpu` limit, leases renewed while the model
composes, and the next videos prepared meanwhile. Real services throughout: Prefect's engine (one server
that every run reports to, as a fleet's), SQLite and PostgreSQL, ffmpeg, the tiny model."""

import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, select


def _clip(path: Path, source: str, seconds: float) -> Path:
    """A small video of its own content (a lavfi source), `seconds` long."""
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"{source}=s=64x36:r=10:d={seconds}",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def _task_runs(flow_run_id: str) -> list:
    """The flow run's task runs, once the server has recorded each one's end (it records task states
    from events, a moment after the flow has returned)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.time() + 60
    with get_client(sync_client=True) as client:
        while True:
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            if time.time() > deadline or all(t.state and t.state.is_final() and t.end_time for t in tasks):
                return tasks
            time.sleep(0.2)


def _seconds(moment) -> float:
    return moment.timestamp()


LEASE = 2.5


@pytest.fixture(scope="module")
def composing(prefect_engine, tmp_path_factory):
    """One catalog run with a 2.5-s lease and batch_videos=1 over three videos, one of which takes longer than
    the lease to compose, its jobs' leases read every 50 ms meanwhile as another worker would find them.
    Returns what was seen: the run's summary, its worker, the long video's content, the task runs' times
    and the observations."""
    from flows.score_catalog import score_catalog
    from storage.db import connect
    from storage.models import Job, Run, Video

    root = tmp_path_factory.mktemp("composing")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GVMGEN_HOME", str(root / "home"))
        library = root / "library"
        _clip(library / "a_long.mp4", "testsrc", 80)  # composes for several leases on any machine (40 s took 3.1 s once)
        _clip(library / "b.mp4", "smptebars", 1)
        _clip(library / "c.mp4", "rgbtestsrc", 1)
        observed, stop = [], threading.Event()

        def observe():
            Session = connect()
            while not stop.is_set():
                with Session() as session:
                    rows = session.execute(select(Job.content_hash, Job.owner, Job.status, Job.lease_expires_at)).all()
                observed.append((datetime.now(timezone.utc).replace(tzinfo=None), rows))
                time.sleep(0.05)

        connect()  # the database exists before the observer reads it
        watcher = threading.Thread(target=observe, daemon=True)
        watcher.start()
        try:
            summary = score_catalog(str(library), str(root / "scored"), model="tiny", lease_s=LEASE, batch_videos=1)
        finally:
            stop.set()
            watcher.join()
        with connect()() as session:
            run = session.scalars(select(Run)).one()
            long_hash = session.scalars(select(Video.content_hash).where(Video.key == "a_long.mp4")).one()
    tasks = _task_runs(run.flow_run_id)
    times = lambda prefix: [(_seconds(t.start_time), _seconds(t.end_time)) for t in tasks if t.name.startswith(prefix)]  # noqa: E731
    return dict(summary=summary, worker=run.worker, long_hash=long_hash, observed=observed,
                composes=times("compose_music"), prepares=times("prepare_video"))




@pytest.mark.slow
def test_the_next_video_is_prepared_while_the_model_composes(composing):
    """batch_videos=1: one video composed at a time, and meanwhile the flow prepares the next one."""
    summary, composes, prepares = composing["summary"], composing["composes"], composing["prepares"]
    assert (summary["scored"], summary["pending"], summary["failed"]) == (3, 0, 0)
    assert len(composes) == 3 and len(prepares) == 3
    assert all(a[1] <= b[0] for a, b in zip(sorted(composes), sorted(composes)[1:]))
    assert any(p[0] < c[1] and c[0] < p[1] for p in prepares for c in composes)


@pytest.mark.slow
def test_a_lease_shorter_than_compose_is_renewed_while_composing(composing):
    """The long video's music takes longer than its 2.5-s lease to compose: while the model composes it, its
    lease never lapses (another worker could take the video) and is renewed again and again."""
    composes, observed = composing["composes"], composing["observed"]
    start, end = max(composes, key=lambda c: c[1] - c[0])      # the long video's batch
    assert end - start > 1.5 * LEASE
    during = [(at, row) for at, rows in observed for row in rows if row.content_hash == composing["long_hash"]
              and start + 0.3 < at.replace(tzinfo=timezone.utc).timestamp() < end - 0.3]
    assert len(during) > 20
    lapsed = [(at, row.lease_expires_at) for at, row in during if not row.lease_expires_at or row.lease_expires_at <= at]
    assert all(row.owner == composing["worker"] and row.status == "pending" for _, row in during)
    assert lapsed == []
    assert len({row.lease_expires_at for _, row in during}) >= 3      # renewed, again and again


CHILD = r"""
import json, sys, time
import flows.score_catalog as flow

from sqlalchemy import or_, select
from storage.db import connect
from storage.models import Job

record = open(sys.argv[3], "a")
real = flow.Composer.stage
def other_worker_seen():   # a lease (or a finished job) of the other process
    with connect()() as session:
        return session.execute(select(Job.id).where(or_(Job.status == "done", Job.owner != flow.worker_id()))).first()
def stage(self, keys=None, after_pass=None):   # the real model work, its times written down
    if not open(sys.argv[3]).read():   # the first: however late the other process starts, it finds work left
        deadline = time.time() + 300
        while not other_worker_seen() and time.time() < deadline:
            time.sleep(0.1)
    start = time.time()
    done = real(self, keys, after_pass)
    record.write(json.dumps({"start": start, "end": time.time(), "jobs": [key for key, _ in done]}) + "\n")
    record.flush()
    return done
flow.Composer.stage = stage
try:
    summary = flow.score_catalog(sys.argv[1], sys.argv[2], model="tiny", batch_videos=1, gpu_slots=1)
except flow.VideosFailed as failed:
    summary = failed.summary
print("SUMMARY " + json.dumps(summary))
"""


@pytest.mark.slow
def test_two_flow_runs_on_one_catalog_score_each_video_once(prefect_engine, tmp_path, database_url, monkeypatch):
    """Two processes run the flow on the same catalog at once, as two machines of a fleet do: one Prefect
    server (its `gpu` limit of one slot), one database (SQLite, then PostgreSQL), one output. Each video is
    scored by exactly one of them, once; every output file is written once and never again; and the model
    work of the two never overlaps in time. So that the work is shared on a loaded machine too, where the
    second process may start seconds late, each process's first model stage waits until the other holds a
    lease."""
    from prefect.settings import PREFECT_API_URL

    from storage.db import connect, upgrade
    from storage.models import Job, Output, Video

    monkeypatch.setenv("GVMGEN_DATABASE_URL", database_url)
    upgrade(database_url)                             # `gvmgen db upgrade`, once, as a fleet's set-up does
    library, out = tmp_path / "library", tmp_path / "scored"
    sources = {"bars": "smptebars", "test": "testsrc", "test2": "testsrc2", "rgb": "rgbtestsrc", "yuv": "yuvtestsrc"}
    for name, lavfi in sources.items():   # enough videos that the second process finds work left
        _clip(library / f"{name}.mp4", lavfi, 1.5)
    names = sorted(sources)

    versions: dict[str, set] = {}
    stop = threading.Event()

    def watch():   # every version of every output file seen, every 20 ms: (inode, mtime, size)
        while not stop.is_set():
            for p in out.rglob("*") if out.exists() else []:
                try:
                    st = p.stat()
                except FileNotFoundError:
                    continue
                if p.is_file() and not p.name.startswith("."):
                    versions.setdefault(p.name, set()).add((st.st_ino, st.st_mtime_ns, st.st_size))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(Path(__file__).parents[2])}
    records = [tmp_path / f"compose-{i}.jsonl" for i in range(2)]
    logs = [(tmp_path / f"child-{i}.out", tmp_path / f"child-{i}.err") for i in range(2)]   # files: a pipe can fill
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(library), str(out), str(r)], env=env,
                                 stdout=o.open("w"), stderr=e.open("w")) for r, (o, e) in zip(records, logs)]
    try:
        codes = [c.wait(timeout=900) for c in children]
    finally:
        stop.set()
        watcher.join()
    summaries = []
    for code, (o, e) in zip(codes, logs):
        assert code == 0, e.read_text()[-3000:]
        summaries.append(json.loads(o.read_text().split("SUMMARY ", 1)[1]))

    assert summaries[0]["run"] != summaries[1]["run"]
    assert summaries[0]["scored"] + summaries[1]["scored"] == len(names)
    assert summaries[0]["scored"] and summaries[1]["scored"], summaries     # the work was shared
    # each run accounts for every video: scored by it, done before it looked, or leased by the other
    assert all(s["failed"] == s["failed_earlier"] == 0 and s["scored"] + s["skipped"] + s["pending"] == len(names)
               for s in summaries), summaries
    composed = [json.loads(line) for r in records if r.exists() for line in r.read_text().splitlines()]
    with connect()() as session:
        video_of_job = dict(session.execute(select(Job.id, Video.key).join(Video, Video.id == Job.video_id)).all())
    assert sorted(video_of_job[j] for c in composed for j in c["jobs"]) == sorted(f"{n}.mp4" for n in names)  # once
    spans = sorted((c["start"], c["end"]) for c in composed)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans      # the gpu slot: one at a time
    with connect()() as session:
        per_content = session.execute(select(Video.content_hash, func.count(Output.id)).join(Output)
                                      .group_by(Video.content_hash)).all()
    assert sorted(n for _, n in per_content) == [1] * len(names)
    expected = sorted(f"{n}.{ext}" for n in names for ext in ("mp4", "flac", "report.png"))
    assert sorted(p.name for p in out.iterdir()) == expected
    final = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size) for p in out.iterdir()}
    assert {name: len(seen) for name, seen in versions.items()} == {name: 1 for name in expected}   # written once
    assert {name: next(iter(seen)) for name, seen in versions.items()} == final



@pytest.mark.slow
def test_a_prepared_video_takes_the_place_of_one_done_at_the_next_window(prefect_engine, tmp_path, monkeypatch):
    """batch_videos=2, 10-s windows: a long video of six windows composes first, and the short ones join
    it one after the other as places free up, so both are scored while the long one still composes. (A
    fixed batch would compose the third video after the long one's last window.) So that this holds on
    a fast machine and a loaded one alike, the short ones are prepared once the long one composes, and
    each stage of the model first waits 1.5 s, far longer than a 1-s clip takes to prepare."""
    import threading

    import flows.score_catalog as flow
    from storage.db import connect
    from storage.models import Output, Video

    library = tmp_path / "library"
    _clip(library / "a_long.mp4", "testsrc", 40)
    _clip(library / "b.mp4", "smptebars", 1)
    _clip(library / "c.mp4", "rgbtestsrc", 1)
    real, composing = flow.prepare, threading.Event()

    def short_ones_later(model, video, settings):
        if video.stat().st_size < (library / "a_long.mp4").stat().st_size:
            composing.wait(timeout=120)
        return real(model, video, settings)

    stages, real_stage = [], flow.Composer.stage

    def slow_stage(self, keys=None, after_pass=None):
        stages.append(len(self.videos if keys is None else keys))
        composing.set()
        time.sleep(1.5)
        return real_stage(self, keys, after_pass)

    monkeypatch.setattr(flow, "prepare", short_ones_later)
    monkeypatch.setattr(flow.Composer, "stage", slow_stage)
    summary = flow.score_catalog(str(library), str(tmp_path / "scored"), model="tiny", batch_videos=2,
                                 settings={"generation": {"window_s": 10.0, "overlap_s": 4.0}})
    assert (summary["scored"], summary["failed"]) == (3, 0)
    with connect()() as session:
        scored_at = dict(session.execute(select(Video.key, Output.created_at)
                                         .join(Output, Output.video_id == Video.id)).all())
    assert scored_at["b.mp4"] < scored_at["a_long.mp4"] and scored_at["c.mp4"] < scored_at["a_long.mp4"]
    assert stages.count(2) == 2 and len(stages) == 6, stages   # two full stages of the long one's six
