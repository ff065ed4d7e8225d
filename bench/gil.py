"""Why a graph replay holds 16 decoding steps, and why the flow shortens the GIL's switch interval: the
GIL hand-back beside a thread that runs Python.

`CUDAGraph.replay` releases the GIL while it launches (torch/csrc/cuda/Graph.cpp), as does every PyTorch
call (CLIP's some 600 kernels a chunk of frames), and the launching thread must take it back before the
next. In the flow, prepare and finish threads run Python beside it (shot detection, loudness, Prefect).
This measures, on this machine's interpreter, how long a call that releases the GIL for 20 us (a
launch's order) takes alone and beside one thread running pure Python, at Python's switch interval and
at the flow's (`GIL_SWITCH_S`), side by side in one run, and what that means for the replays of a 30-s
window.

    python bench/gil.py [--calls 300]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time

from flows.score_catalog import GIL_SWITCH_S
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


def python_throughput(seconds: float = 2.0, threads: int = 4) -> float:
    """Loop iterations a second of `threads` threads running pure Python together (what a shorter switch
    interval could cost them: more switches)."""
    counts, stop = [0] * threads, threading.Event()

    def count(k: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
        counts[k] = n

    workers = [threading.Thread(target=count, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    return sum(counts) / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}")
    default = sys.getswitchinterval()
    waits, rates = {}, {}
    for interval in (default, GIL_SWITCH_S):
        sys.setswitchinterval(interval)
        alone, beside = per_call(args.calls), beside_python(args.calls)
        waits[interval] = wait = max(0.0, beside - alone)
        print(f"switch interval {interval * 1e3:.1f} ms: a call releasing the GIL for {LAUNCH_S * 1e6:.0f} us takes "
              f"{alone * 1e3:.3f} ms alone, {beside * 1e3:.3f} ms beside a thread running Python ({beside / alone:.0f}x)")
        for steps, count in ((1, WINDOW_STEPS), (REPLAY_STEPS, len(replays(0, WINDOW_STEPS)))):
            print(f"  {steps:2} step(s) a replay: {count:5} replays a 30-s window, {count * wait:6.2f} s of GIL waits "
                  f"beside such a thread")
    python_throughput(1.0)   # warm-up: the first run on a machine is slow whatever its interval
    for _ in range(3):       # interleaved: this machine's speed drifts by tens of percent between seconds
        for interval in (default, GIL_SWITCH_S):
            sys.setswitchinterval(interval)
            rates.setdefault(interval, []).append(python_throughput())
    sys.setswitchinterval(default)
    rates = {interval: statistics.median(r) for interval, r in rates.items()}
    print("four threads running pure Python, median of 3 interleaved runs: "
          + ", ".join(f"{rates[i] / 1e6:.2f} M loops a second at {i * 1e3:.1f} ms" for i in (default, GIL_SWITCH_S)))
    print(f"RESULT gil_wait_ms_per_call={waits[default] * 1e3:.3f}")
    print(f"RESULT gil_wait_ms_per_call_flow={waits[GIL_SWITCH_S] * 1e3:.3f}")
    print(f"RESULT gil_wait_default_vs_flow={waits[default] / max(waits[GIL_SWITCH_S], 1e-9):.1f}")
    print(f"RESULT python_throughput_flow_vs_default={rates[GIL_SWITCH_S] / rates[default]:.3f}")


if __name__ == "__main__":
    main()
