"""Whole-catalog throughput: N synthetic videos scored through the real `score-catalog` flow.

Makes N videos with ffmpeg (lavfi sources, hard cuts between shots of 4-20 s, no download), publishes
a randomly initialised model of the preset as a checkpoint folder, and scores the catalog with
`flows.score_catalog.score_catalog` on the embedded defaults (a local folder, SQLite, Prefect without a
server) under a temporary GVMGEN_HOME. Prints, as RESULT lines:

- music-seconds per wall-second for the whole catalog (prepare, compose and finish overlapped, CLIP
  included; the Prefect engine is started by a run on an empty catalog first, and the model is loaded
  before the clock starts, as a long-lived worker would have them);
- the same model's generation-only throughput on the same videos (their durations and cuts, one token
  per second, batched as the flow batches them: `batch_videos` at a time, the next one joining as one
  is done; codec decode included), and the ratio of the two;
- the GPU's busy share from the first `compose_music` to the end of the run: NVML's utilisation
  (`pynvml`, from the `nvidia-ml-py` package) sampled every 50 ms, or without it an upper bound from CUDA
  events around every model call (the time between a call's first and last kernel);
- the time split between the flow's three tasks (task-seconds from Prefect's task runs);
- the model passes of the catalog run and the windows a pass (videos join as others are done), and
  the passes that fixed batches of `batch_videos` videos in catalog order would take.

On CUDA the LM runs in bf16, as the flow loads it (`load_for_scoring`).

    python bench/catalog.py [--preset small|tiny] [--videos 16] [--min-seconds 60] [--max-seconds 180]
                            [--batch-videos 4] [--stall-dump SECONDS]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from flows import embedded_prefect_environment, print_stacks

SOURCES = ["testsrc2", "smptehdbars", "cellauto=rule=110", "life=mold=10:life_color=#00ff00", "rgbtestsrc",
           "yuvtestsrc", "color=c=navy", "testsrc"]
STAGES = ("prepare_video", "compose_music", "finish_video")


@contextlib.contextmanager
def stall_dumps(every: float):
    """While the block runs, every thread's stack every `every` seconds (where a run that seems stuck
    waits). With py-spy on PATH (the `gpu` extra) from a shell loop outside this process: native frames
    too (a CUDA call, a lock), and which thread holds the GIL; a thread stuck in C holding it would stop
    any dump made from this process's Python. Else, or where py-spy may not read this process (ptrace
    refused), Python's stacks from a thread."""
    spy, pid, refused = shutil.which("py-spy"), os.getpid(), None
    if spy:
        try:
            probe = subprocess.run([spy, "dump", "--native", "--pid", str(pid)], capture_output=True, text=True,
                                   timeout=60)
            refused = probe.returncode and (probe.stderr.strip() or f"exit {probe.returncode}")
        except (OSError, subprocess.TimeoutExpired) as e:
            refused = str(e)
    if spy and not refused:
        # Checks every second that this process lives: killed (a `timeout`), it leaves no loop holding its
        # output pipe for long (the loop has a process group of its own, for the kill below).
        loop = (f"n=0; while sleep 1 && kill -0 {pid} 2>/dev/null; do n=$((n + 1)); [ $n -lt {max(1, round(every))} ] "
                f"&& continue; n=0; echo \"--stall-dump: py-spy, $(date +%T)\"; {shlex.quote(spy)} dump --native --pid {pid}; done")
        watcher = subprocess.Popen(["sh", "-c", loop], stdout=sys.stderr, stderr=sys.stderr, start_new_session=True)
        try:
            yield
        finally:
            os.killpg(watcher.pid, signal.SIGKILL)   # the loop and a dump under way
            watcher.wait()
        return
    if refused:
        print(f"--stall-dump: py-spy cannot read this process ({refused}); Python's stacks instead", file=sys.stderr)
    done = threading.Event()

    def dump() -> None:
        while not done.wait(every):
            print(f"--stall-dump: every thread's stack, {time.strftime('%H:%M:%S')}", file=sys.stderr)
            print_stacks()

    threading.Thread(target=dump, name="stall-dump", daemon=True).start()
    try:
        yield
    finally:
        done.set()


def make_catalog(folder: Path, count: int, shortest: float, longest: float,
                 seed: int = 0) -> dict[str, tuple[float, list[float]]]:
    """`count` videos of `shortest`..`longest` seconds, shots of 4-20 s from alternating sources joined by
    hard cuts, 640x360 at 25 fps. Returns {file name: (duration, cut times)}."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for i in range(count):
        duration = round(rng.uniform(shortest, longest) * 25) / 25
        shots, start = [], 0.0
        while start < duration - 1e-6:
            length = min(rng.uniform(4, 20), duration - start)
            shots.append(length)
            start += length
        inputs, first = [], rng.randrange(len(SOURCES))
        for n, length in enumerate(shots):
            source = SOURCES[(first + n) % len(SOURCES)]
            options = ":" if "=" in source else "="
            inputs += ["-f", "lavfi", "-t", f"{length:.3f}", "-i", f"{source}{options}s=640x360:r=25"]
        graph = "".join(f"[{n}:v]" for n in range(len(shots))) + f"concat=n={len(shots)}:v=1:a=0,format=yuv420p[v]"
        name = f"video-{i:02d}.mp4"
        subprocess.run(["ffmpeg", "-v", "error", "-y", *inputs, "-filter_complex", graph, "-map", "[v]",
                        "-c:v", "libx264", "-preset", "ultrafast", "-r", "25", str(folder / name)], check=True)
        cuts = [sum(shots[:n]) for n in range(1, len(shots))]
        made[name] = (duration, cuts)
    return made


class NvmlBusy:
    """GPU utilisation sampled by NVML on a thread: (time, percent of the last period a kernel ran)."""

    def __init__(self, device_index: int):
        import pynvml

        pynvml.nvmlInit()
        self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(device_index)
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self):
        while not self.stop.wait(0.05):
            self.samples.append((time.time(), self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu / 100))

    def share(self, start: float, end: float) -> float:
        self.stop.set()
        self.thread.join()
        inside = [u for t, u in self.samples if start <= t <= end]
        return sum(inside) / len(inside) if inside else float("nan")

    label = "NVML utilisation"


class EventBusy:
    """Without NVML: CUDA events around every model call (static decoder, frame encoding, codec), on
    one GPU timeline; the union of [first kernel, last kernel] of the calls is an upper bound of the
    busy time (a call's own idle gaps count as busy)."""

    label = "CUDA events (upper bound)"

    def __init__(self, targets):
        import torch

        self.torch = torch
        torch.cuda.synchronize()
        self.origin, self.origin_wall = torch.cuda.Event(enable_timing=True), time.time()
        self.origin.record()
        self.calls: list[tuple] = []
        self.lock = threading.Lock()
        for owner, name in targets:
            setattr(owner, name, self._timed(getattr(owner, name)))

    def _timed(self, method):
        @functools.wraps(method)
        def timed(*args, **kwargs):
            begin, end = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
            begin.record()
            try:
                return method(*args, **kwargs)
            finally:
                end.record()
                with self.lock:
                    self.calls.append((begin, end))
        return timed

    def share(self, start: float, end: float) -> float:
        self.torch.cuda.synchronize()
        at = lambda event: self.origin_wall + self.origin.elapsed_time(event) / 1e3   # wall-clock seconds
        spans = sorted((at(a), at(b)) for a, b in self.calls)
        busy, reach = 0.0, start
        for a, b in spans:
            a, b = max(a, reach), min(b, end)
            if b > a:
                busy += b - a
                reach = b
        return busy / (end - start)


class PassCount:
    """The model passes of a run and the windows in them, counted where `MusicGenerator.sample` is called."""

    def __init__(self):
        from gvmgen.generate import MusicGenerator

        self.owner, self.real, self.passes, self.windows = MusicGenerator, MusicGenerator.sample, 0, 0

        def sample(generator, conditions, *args, **kwargs):
            self.passes, self.windows = self.passes + 1, self.windows + len(conditions)
            return self.real(generator, conditions, *args, **kwargs)
        MusicGenerator.sample = sample

    def stop(self) -> None:
        self.owner.sample = self.real


def fixed_batch_passes(model, videos: dict[str, tuple[float, list[float]]], batch_videos: int) -> int:
    """The passes that fixed batches of `batch_videos` videos in catalog order would take (continue
    mode: a batch takes as many passes as its longest video has windows), for comparison."""
    import torch

    from gvmgen.generate import MusicGenerator, VisualTokens

    planner = MusicGenerator(model)
    windows = [len(planner.plan(VisualTokens(torch.zeros(0, 1), torch.zeros(0), duration, cuts)))
               for duration, cuts in videos.values()]
    return sum(max(windows[i:i + batch_videos]) for i in range(0, len(windows), batch_videos))


def task_runs(flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def generation_only(model, videos: dict[str, tuple[float, list[float]]], batch_videos: int, seed: int) -> float:
    """Music-s per wall-s of the model alone on videos of the same durations and cuts, batched as the flow
    batches them (`batch_videos` at a time, the next joining as one is done)."""
    import torch

    from gvmgen.generate import GenerationSettings, MusicGenerator, VisualTokens

    g = torch.Generator().manual_seed(seed)
    d = model.config.lm["hidden_size"]
    tokens = [VisualTokens(torch.randn(math.ceil(duration), d, generator=g) * 0.1,
                           torch.arange(math.ceil(duration), dtype=torch.float64), duration, cuts)
              for duration, cuts in videos.values()]
    cuda = next(model.lm.parameters()).is_cuda
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    MusicGenerator(model, GenerationSettings(seed=seed)).generate(tokens, at_once=batch_videos)
    if cuda:
        torch.cuda.synchronize()
    return sum(d for d, _ in videos.values()) / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=["small", "tiny"])
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--min-seconds", type=float, default=60.0)
    parser.add_argument("--max-seconds", type=float, default=180.0)
    parser.add_argument("--batch-videos", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary GVMGEN_HOME (printed)")
    parser.add_argument("--stall-dump", type=float, default=0, metavar="SECONDS",
                        help="while the catalog run goes on, print every thread's stack every SECONDS (0: never): "
                             "where a run that seems stuck waits")
    args = parser.parse_args()
    if args.stall_dump < 0:
        parser.error(f"--stall-dump {args.stall_dump:g}: seconds between dumps, 0 for none")

    home = Path(tempfile.mkdtemp(prefix="gvmgen-catalog-bench-"))
    os.environ.update(GVMGEN_HOME=str(home), PREFECT_HOME=str(home / "prefect"))
    embedded_prefect_environment(home / "prefect")
    try:
        run(args, home)
    finally:
        if args.keep:
            print(f"kept {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)


def run(args, home: Path):
    import torch

    from flows.score_catalog import cached_model, score_catalog  # after GVMGEN_HOME and PREFECT_HOME are set
    from gvmgen.model.checkpoints import fresh_model, save_model
    from gvmgen.model.config import preset
    from gvmgen.model.decoding import StaticDecoder
    from gvmgen.model.gvmgen import GVMGen

    videos = make_catalog(home / "catalog", args.videos, args.min_seconds, args.max_seconds, args.seed)
    model_dir = home / "model"
    save_model(fresh_model(preset(args.preset)), model_dir)
    (home / "empty").mkdir()
    score_catalog(str(home / "empty"), str(home / "scored-empty"), model=str(model_dir))  # starts the engine
    model = cached_model(str(model_dir))                       # the instance the flow's tasks will use
    cuda = next(model.lm.parameters()).is_cuda
    where = torch.cuda.get_device_name() if cuda else f"cpu, {torch.get_num_threads()} threads"
    music = sum(d for d, _ in videos.values())
    print(f"preset {args.preset}, {len(videos)} videos, {music:.0f} s of video, batch_videos {args.batch_videos}, {where}")

    busy = None
    if cuda:
        try:
            busy = NvmlBusy(torch.cuda.current_device())
        except Exception as e:  # no pynvml, or no NVML on this machine
            print(f"NVML unavailable ({type(e).__name__}: {e}); GPU busy share from CUDA events instead")
            busy = EventBusy([(StaticDecoder, "decode"), (GVMGen, "encode_video_frames"), (GVMGen, "decode_audio")])
    passes = PassCount()
    started = time.time()
    with stall_dumps(args.stall_dump) if args.stall_dump else contextlib.nullcontext():
        state = score_catalog(str(home / "catalog"), str(home / "scored"), model=str(model_dir),
                              batch_videos=args.batch_videos, return_state=True)
    ended = time.time()
    passes.stop()
    counts = state.result()
    wall = ended - started
    print(f"catalog: {counts}, {wall:.1f} s wall")

    runs = [r for r in task_runs(state.state_details.flow_run_id) if r.start_time is not None]
    stage_seconds = {s: sum(r.total_run_time.total_seconds() for r in runs if r.name.rsplit("-", 1)[0] == s)
                     for s in STAGES}
    composes = [r.start_time.timestamp() for r in runs if r.name.rsplit("-", 1)[0] == "compose_music"]
    gen_rate = generation_only(model, videos, args.batch_videos, args.seed)
    catalog_rate = music / wall

    print(f"RESULT catalog_videos_scored={counts['scored']}")
    print(f"RESULT catalog_music_s={music:.3f}")
    print(f"RESULT catalog_wall_s={wall:.3f}")
    print(f"RESULT catalog_music_s_per_s={catalog_rate:.3f}")
    print(f"RESULT generation_only_music_s_per_s={gen_rate:.3f}")
    print(f"RESULT catalog_vs_generation_only={catalog_rate / gen_rate:.3f}")
    print(f"RESULT catalog_model_passes={passes.passes}")
    print(f"RESULT catalog_windows_per_pass={passes.windows / max(1, passes.passes):.2f}")
    print(f"RESULT fixed_batch_passes={fixed_batch_passes(model, videos, args.batch_videos)}  "
          f"(fixed batches of {args.batch_videos} in catalog order, for comparison)")
    total = sum(stage_seconds.values())
    for stage, seconds in stage_seconds.items():
        name = stage.split("_")[0]
        print(f"RESULT split_{name}_task_s={seconds:.1f}")
        print(f"RESULT split_{name}_share={seconds / total:.3f}")
    if busy is not None and composes:
        print(f"GPU busy share measured with {busy.label}, from the first compose_music to the end of the run")
        print(f"RESULT gpu_busy_share={busy.share(min(composes), ended):.3f}")
    else:
        print("RESULT gpu_busy_share=nan  (no GPU)")


if __name__ == "__main__":
    main()
