"""bench/catalog.py on the tiny preset: two short videos through the real score-catalog flow."""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_catalog_bench_prints_consistent_results(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "catalog.py"), "--preset", "tiny", "--videos", "2",
                           "--min-seconds", "3", "--max-seconds", "5", "--batch-videos", "2",
                           "--stall-dump", "1"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = dict(line.split()[1].split("=") for line in done.stdout.splitlines() if line.startswith("RESULT "))
    value = {k: float(v) for k, v in results.items()}
    assert value["catalog_videos_scored"] == 2
    assert 6 <= value["catalog_music_s"] <= 10                          # two videos of 3-5 s
    assert value["catalog_music_s_per_s"] == pytest.approx(value["catalog_music_s"] / value["catalog_wall_s"], rel=0.02)
    assert value["catalog_vs_generation_only"] == pytest.approx(
        value["catalog_music_s_per_s"] / value["generation_only_music_s_per_s"], rel=0.01)
    stages = ("prepare", "compose", "finish")
    assert all(value[f"split_{s}_task_s"] > 0 for s in stages)
    assert sum(value[f"split_{s}_share"] for s in stages) == pytest.approx(1, abs=0.005)
    assert math.isnan(value["gpu_busy_share"]) or 0 <= value["gpu_busy_share"] <= 1
    # one window each: composed together (one pass of two) or the second joining after the first (two of one)
    assert (value["catalog_model_passes"], value["catalog_windows_per_pass"]) in ((1, 2.0), (2, 1.0))
    assert value["fixed_batch_passes"] == 1
    assert "Thread 0x" in done.stderr and "in score_catalog" in done.stderr   # --stall-dump: the flow's stack


WAITER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("catalog_bench", sys.argv[1])
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

def waiting_for_the_gpu():
    time.sleep(3)

with bench.stall_dumps(1):
    waiting_for_the_gpu()
print("after the block")
time.sleep(2)   # no dump comes after the block
"""


@pytest.mark.parametrize("spy", [True, False], ids=["py-spy", "python"])
def test_stall_dumps_show_where_the_process_waits(tmp_path, spy):
    bin_dir = Path(sys.executable).parent
    if spy and not (bin_dir / "py-spy").exists():
        pytest.skip("py-spy is not installed beside this Python (the test extra has it)")
    # without py-spy: a PATH that has only the shell's tools, not this environment's py-spy
    path = f"{bin_dir}:{os.environ['PATH']}" if spy else "/usr/bin:/bin"
    done = subprocess.run([sys.executable, "-c", WAITER, str(ROOT / "bench" / "catalog.py")],
                          env=dict(os.environ, PYTHONPATH=str(ROOT), PATH=path), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    if "py-spy cannot read this process" in done.stderr:
        pytest.skip("ptrace is refused here: " + done.stderr.splitlines()[0])
    dumps = done.stderr.count("--stall-dump: py-spy" if spy else "--stall-dump: every thread's stack")
    assert 1 <= dumps <= 3, done.stderr                      # one a second during the 3-s wait, none after it
    assert "waiting_for_the_gpu" in done.stderr
    if spy:   # native frames, and each thread's state
        assert "MainThread" in done.stderr and "(idle)" in done.stderr and "libc" in done.stderr
    else:
        assert "Thread 0x" in done.stderr and "in waiting_for_the_gpu" in done.stderr
