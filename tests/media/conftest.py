import subprocess
from pathlib import Path

import pytest


def run_ffmpeg(*args) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *map(str, args)], check=True)


@pytest.fixture
def ffmpeg():
    return run_ffmpeg


@pytest.fixture
def make_video(tmp_path):
    """make_video(name, ffmpeg args...) -> path: a video the test builds with ffmpeg's lavfi sources."""
    def make(name: str, *args) -> Path:
        out = tmp_path / name
        run_ffmpeg(*args, out)
        return out
    return make
