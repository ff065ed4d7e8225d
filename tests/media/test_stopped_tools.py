"""ffmpeg killed midway (the out-of-memory killer's SIGKILL) or failed by a full disk is the machine's doing:
MachineFault, never a MediaError, which would fail the video for good. A crash is the file's."""

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gvmgen.media.audio import write_track
from gvmgen.media.frames import analyse
from gvmgen.media.mux import mux
from gvmgen.media.probe import MachineFault, MediaError, ToolStopped, probe


def _ffmpeg_children() -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, rest = stat.read_text().rsplit(")", 1)
        except OSError:
            continue
        state, parent = rest.split()[:2]
        if name.endswith("(ffmpeg") and int(parent) == os.getpid() and state != "Z":  # running, not yet reaped
            found.append(int(stat.parent.name))
    return found


def _stop_the_first_ffmpeg(sig: signal.Signals, stopped: list[int]) -> threading.Thread:
    """Sends `sig` to the first ffmpeg of this process's that has run for 0.3 s."""
    def watch():
        seen: dict[int, float] = {}
        deadline = time.monotonic() + 60
        while not stopped and time.monotonic() < deadline:
            now = time.monotonic()
            for pid in _ffmpeg_children():
                if now - seen.setdefault(pid, now) >= 0.3:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:  # it ended meanwhile
                        continue
                    stopped.append(pid)
                    return
            time.sleep(0.01)
    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """Ten minutes of small picture: ffmpeg works on it for seconds."""
    import subprocess

    out = tmp_path_factory.mktemp("long") / "long.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=64x64:rate=10:duration=600",
                    "-c:v", "libx264", "-preset", "ultrafast", str(out)], check=True)
    return out


def test_a_decode_killed_midway_is_not_the_videos_fault(long_video):
    stopped: list[int] = []
    watcher = _stop_the_first_ffmpeg(signal.SIGKILL, stopped)
    with pytest.raises(ToolStopped, match="ffmpeg was stopped by SIGKILL while decoding long.mp4") as raised:
        analyse(long_video)
    watcher.join()
    assert stopped and not isinstance(raised.value, MediaError)


def test_a_crashing_decode_is_the_files_fault(long_video):
    stopped: list[int] = []
    watcher = _stop_the_first_ffmpeg(signal.SIGSEGV, stopped)   # as ffmpeg crashing on a malformed file
    with pytest.raises(MediaError):
        analyse(long_video)
    watcher.join()
    assert stopped


def test_a_mux_killed_midway_is_not_the_videos_fault_and_leaves_no_file(long_video, tmp_path):
    info = probe(long_video)
    music = tmp_path / "music.flac"
    write_track(music, 0.3 * np.sin(2 * np.pi * 440 * np.arange(round(info.duration * 32000)) / 32000), 32000)
    stopped: list[int] = []
    watcher = _stop_the_first_ffmpeg(signal.SIGKILL, stopped)
    with pytest.raises(ToolStopped, match="stopped by SIGKILL while muxing"):
        mux(info, music, tmp_path / "out.mp4", info.start)
    watcher.join()
    assert stopped and sorted(p.name for p in tmp_path.iterdir()) == ["music.flac"]


@pytest.fixture
def small_disk(tmp_path):
    """A folder on a 256 KiB file system of its own (tmpfs: needs root, as in CI)."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_mux_onto_a_full_disk_is_not_the_videos_fault_and_leaves_no_file(long_video, tmp_path, small_disk):
    info = probe(long_video)
    music = tmp_path / "music.flac"
    write_track(music, 0.3 * np.sin(2 * np.pi * 440 * np.arange(round(info.duration * 32000)) / 32000), 32000)
    assert long_video.stat().st_size > 256 << 10                  # the copy cannot fit
    with pytest.raises(MachineFault, match=f"ffmpeg failed while muxing the music into {long_video.name}: .*"
                                           "No space left on device"):
        mux(info, music, small_disk / "out.mp4", info.start)
    assert list(small_disk.iterdir()) == []
