"""A catalog run killed with SIGKILL midway, then run again: every video scored exactly once, and no
partial output anywhere."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import func, select

# `gvmgen score`, whose second record never comes: the kill finds one video recorded and two to do
# however the machine schedules the run (the videos finish side by side, so without this all three
# could be recorded before the test sees the first).
ONE_RECORD_THEN_STALL = r"""
import sys, threading
import storage.repository as repo
from cli import main

real, records = repo.complete, []
def complete(*args, **kwargs):
    records.append(None)
    if len(records) > 1:
        threading.Event().wait()
    return real(*args, **kwargs)
repo.complete = complete
sys.argv[0] = "gvmgen"
main()
"""


@pytest.mark.slow
def test_a_killed_run_resumes_without_scoring_anything_twice(fixtures, tmp_path, monkeypatch, recorded_outputs):
    from storage.db import connect
    from storage.models import Output, Video

    library, out = tmp_path / "library", tmp_path / "scored"
    library.mkdir()
    names = ["counter", "delayed_start", "fades"]
    for name in names:
        shutil.copy(fixtures / "video" / f"{name}.mp4", library / f"{name}.mp4")
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    arguments = ["score", str(library), "--out", str(out), "--lease", "3", "--json"]

    # Its own process group, so the kill takes everything it started (Prefect's temporary server too),
    # as a machine losing power would.
    first = subprocess.Popen([sys.executable, "-c", ONE_RECORD_THEN_STALL, *arguments], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 900
    while time.time() < deadline and not recorded_outputs() and first.poll() is None:
        time.sleep(0.05)
    assert recorded_outputs(), "the first run scored nothing before the deadline"
    os.killpg(first.pid, signal.SIGKILL)              # mid-catalog: two videos are still to do
    first.wait()
    with connect()() as session:
        finished = sorted(session.scalars(select(Video.key).join(Output)).all())
    assert len(finished) == 1
    # what the first run finished (recorded): its files, byte for byte and with their times
    kept = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()
            if p.name.split(".")[0] + ".mp4" in finished}
    assert len(kept) == 3 * len(finished)

    time.sleep(3.5)                                   # the killed worker's lease runs out
    second = subprocess.run([sys.executable, "-m", "cli", *arguments], capture_output=True, text=True)
    assert second.returncode == 0, second.stderr[-2000:]
    summary = json.loads(second.stdout.strip().splitlines()[-1])
    assert (summary["scored"], summary["skipped"], summary["failed"], summary["failed_earlier"], summary["pending"]) == \
        (len(names) - len(finished), len(finished), 0, 0, 0)
    assert {name: (p.read_bytes(), p.stat().st_mtime_ns) for name in kept for p in [out / name]} == kept

    with connect()() as session:
        per_video = session.execute(select(Video.key, func.count(Output.id)).join(Output).group_by(Video.key)).all()
    assert sorted(per_video) == [(f"{n}.mp4", 1) for n in names]
    files = sorted(p.name for p in out.rglob("*"))
    assert files == sorted(f"{n}.{ext}" for n in names for ext in ("mp4", "flac", "report.png"))
