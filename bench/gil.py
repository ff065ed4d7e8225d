"""Why a graph replay holds 16 decoding steps: the GIL hand-back beside a thread that runs Python.

`CUDAGraph.replay` releases the GIL while it launches (torch/csrc/cuda/Graph.cpp), and the decoding
thread must take it back before the next replay. In the flow, prepare and finish threads run Python
beside it (shot detection, loudness, Prefect). This measures, on this machine's interpreter, how long
a call that releases the GIL for 20 us (a launch's order) takes alone and beside one thread running
pure Python, side by side in one run, and what that means for the replays of a 30-s window.

    python bench/gil.py [--calls 300]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from gvmgen.model.decoding import REPLAY_STEPS, replays

LAUNCH_S = 20e-6          # the GIL released this long per call, as during a replay's launch
WINDOW_STEPS = 1503       # a 30-s window: 1500 frames + 3 delay steps


def per_call(calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        time.sleep(LAUNCH_S)
    return (time.perf_counter() - started) / calls


def beside_python(calls: int) -> float:
    stop = threading.Event()

    def python_work():
        n = 0
        while not stop.is_set():
            n += 1

    other = threading.Thread(target=python_work)
    other.start()
    time.sleep(0.02)
    try:
        return per_call(calls)
    finally:
        stop.set()
        other.join()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    alone, beside = per_call(args.calls), beside_python(args.calls)
    wait = max(0.0, beside - alone)
    print(f"python {sys.version.split()[0]}, switch interval {sys.getswitchinterval() * 1e3:.1f} ms")
    print(f"a call releasing the GIL for {LAUNCH_S * 1e6:.0f} us: {alone * 1e3:.3f} ms alone, "
          f"{beside * 1e3:.3f} ms beside a thread running Python ({beside / alone:.0f}x)")
    for steps, count in ((1, WINDOW_STEPS), (REPLAY_STEPS, len(replays(0, WINDOW_STEPS)))):
        print(f"{steps:2} step(s) a replay: {count:5} replays a 30-s window, {count * wait:6.2f} s of GIL waits "
              f"beside such a thread")
    print(f"RESULT gil_wait_ms_per_call={wait * 1e3:.3f}")
    print(f"RESULT gil_beside_vs_alone={beside / alone:.1f}")


if __name__ == "__main__":
    main()
