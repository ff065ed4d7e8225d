"""Frame extraction plus shot detection, against a bare decode of the same file, and its memory.

    python bench/extraction.py [--seconds 60]

1. A 60-s 1080p30 H.264 video with six shots (made here with ffmpeg's lavfi sources).
2. Wall time (median of 3) of `ffmpeg -i X -f null -` (the bare decode), of our single-pass analyse(),
   and of the naive two-pass way (PySceneDetect's detect(), then ffmpeg fps=1 for the frames), in one run.
3. Peak RSS of analyse() on a 2-minute and a 2-hour video of the same (low) resolution.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCES = ["testsrc2", "smptehdbars", "rgbtestsrc", "testsrc", "yuvtestsrc", "pal100bars"]


def make_video(path: Path, seconds: float, size: str, rate: int) -> Path:
    if path.exists():
        return path
    shot = seconds / len(SOURCES)
    inputs = [a for src in SOURCES for a in ("-f", "lavfi", "-i", f"{src}=s={size}:r={rate}:d={shot}")]
    graph = "".join(f"[{i}:v]" for i in range(len(SOURCES))) + f"concat=n={len(SOURCES)}:v=1[v]"
    subprocess.run(["ffmpeg", "-v", "error", "-y", *inputs, "-filter_complex", graph, "-map", "[v]",
                    "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def timed(fn, repeats: int = 3) -> float:
    """The median wall time of `repeats` runs."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def bare_decode(path: Path) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"], check=True)


def ours(path: Path) -> None:
    from gvmgen.media.frames import analyse

    analyse(path, size=336, on_frames=lambda images, frames: None)


def naive_two_pass(path: Path) -> None:
    from scenedetect import ContentDetector, detect

    detect(str(path), ContentDetector())
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-vf", "fps=1,scale=336:336", "-f", "rawvideo",
                    "-pix_fmt", "rgb24", "-"], check=True, stdout=subprocess.DEVNULL)


def peak_rss_mb(path: Path) -> float:
    code = ("import resource, sys; from gvmgen.media.frames import analyse; "
            "a = analyse(sys.argv[1], size=336, on_frames=lambda i, f: None); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, len(a.frames))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout
    return float(out.split()[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "gvmgen-bench")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    hd = make_video(args.workdir / f"hd-{args.seconds:g}s.mp4", args.seconds, "1920x1080", 30)
    bare_decode(hd)  # warm the page cache
    decode = timed(lambda: bare_decode(hd))
    single = timed(lambda: ours(hd))
    naive = timed(lambda: naive_two_pass(hd))
    print(f"{args.seconds:g}-s 1080p30: bare decode {decode:.2f} s, ours {single:.2f} s, naive two-pass {naive:.2f} s")
    print(f"ours / decode = {single / decode:.2f}x, naive / decode = {naive / decode:.2f}x")

    short = make_video(args.workdir / "lowres-2min.mp4", 120, "320x180", 10)
    long = make_video(args.workdir / "lowres-2h.mp4", 7200, "320x180", 10)
    rss_short, rss_long = peak_rss_mb(short), peak_rss_mb(long)
    print(f"peak RSS: 2-min {rss_short:.0f} MB, 2-h {rss_long:.0f} MB ({rss_long / rss_short:.2f}x)")
    print(f"RESULT rss_2h_vs_2min={rss_long / rss_short:.2f}")
    print(f"RESULT extraction_vs_decode={single / decode:.2f}")


if __name__ == "__main__":
    main()
