"""Where `finish_video` spends its time: the CPU work after the GPU has composed a track.

    python bench/finish.py [--seconds 90] [--repeats 3]

Makes one synthetic video of `--seconds` (bench/catalog.py's generator: shots joined by cuts), prepares
it with the tiny model, and runs `gvmgen.pipeline.finish` on a varied music-like track of the model's
rate (32 kHz mono): delivery resampling, loudness normalisation under the true-peak ceiling, the FLAC
track, the mux and the report. Prints the median seconds of each step and of the whole, and the whole
as a share of the track's length. In a catalog run the GPU waits on this for the last batch, and the
media threads share the host with the decoding loop, so every second here counts.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.catalog import make_catalog  # noqa: E402
from gvmgen import pipeline  # noqa: E402
from gvmgen.files import scratch  # noqa: E402
from gvmgen.model.checkpoints import calibration_audio, load_model  # noqa: E402
from gvmgen.settings import ScoreSettings  # noqa: E402

STEPS = ("to_delivery", "normalise", "write_track", "mux", "write_report")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(dir=scratch()))  # removed at exit
    make_catalog(folder, 1, args.seconds, args.seconds)
    model = load_model("tiny")
    settings = ScoreSettings()
    prepared = pipeline.prepare(model, folder / "video-00.mp4", settings)
    rate = model.config.sample_rate
    track = calibration_audio(rate, seconds=args.seconds)[0]

    spent: dict[str, list[float]] = defaultdict(list)
    for step in STEPS:  # time the very functions finish() calls, where it calls them
        def timed(*a, _fn=getattr(pipeline, step), _step=step, **kw):
            started = time.perf_counter()
            try:
                return _fn(*a, **kw)
            finally:
                spent[_step].append(time.perf_counter() - started)
        setattr(pipeline, step, functools.wraps(getattr(pipeline, step))(timed))
    for i in range(args.repeats):
        started = time.perf_counter()
        pipeline.finish(prepared, track, rate, folder / f"out-{i}.mp4", settings)
        spent["finish"].append(time.perf_counter() - started)

    print(f"finish of a {args.seconds:g}-s track, median of {args.repeats}:")
    for step in (*STEPS, "finish"):
        print(f"  {step:13} {statistics.median(spent[step]):6.2f} s")
    whole = statistics.median(spent["finish"])
    print(f"RESULT finish_s={whole:.2f}")
    print(f"RESULT finish_share_of_track={whole / args.seconds:.3f}")


if __name__ == "__main__":
    main()
