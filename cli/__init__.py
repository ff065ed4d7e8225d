"""The `gvmgen` command line: it assembles the library (gvmgen), storage and the flows, so it lives
above all three.

Every expected error is one line on stderr (`error: ...`) and exit status 2; `--debug` (or
GVMGEN_DEBUG=1) shows the traceback instead. Prefect's own logs go to the Prefect API and to
GVMGEN_HOME/logs/prefect.log, not into the terminal, so progress bars stay whole (`-v` shows them).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import os
import signal
import sys
import traceback
from datetime import datetime
from enum import Enum
from pathlib import Path
from urllib.parse import unquote, urlparse

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from flows import BATCH_RANGE, LEASE_RANGE, embedded_prefect_environment, stacks_on_sigusr1

# Plain help (click's): paragraphs rewrapped to the terminal, flags shown without a value
PLAIN = dict(no_args_is_help=True, rich_markup_mode=None)
app = typer.Typer(help="Score videos with GVMGen: music composed for the picture.", pretty_exceptions_enable=False,
                  **PLAIN)
weights_app = typer.Typer(help="Pretrained weights.", **PLAIN)
app.add_typer(weights_app, name="weights")
runs_app = typer.Typer(help="Catalog runs recorded in the database.", **PLAIN)
app.add_typer(runs_app, name="runs")
videos_app = typer.Typer(help="Videos recorded in the database.", **PLAIN)
app.add_typer(videos_app, name="videos")
db_app = typer.Typer(help="The metadata database (SQLite under GVMGEN_HOME, or GVMGEN_DATABASE_URL).", **PLAIN)
app.add_typer(db_app, name="db")
console = Console(stderr=True, soft_wrap=True)   # progress, status and errors
out = Console(soft_wrap=True)                    # what a command reports: tables and summaries
OPTIONS = {"debug": os.environ.get("GVMGEN_DEBUG") == "1", "verbose": False, "quiet": False}


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"gvmgen {version('gvmgen')}")
        raise typer.Exit()


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error (or GVMGEN_DEBUG=1)."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="Show Prefect's logs in the terminal too."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress bars or summaries: errors and --json only."),
    _: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
):
    OPTIONS.update(debug=debug or OPTIONS["debug"], verbose=verbose, quiet=quiet)


class Stitch(str, Enum):
    continue_ = "continue"
    parallel = "parallel"


class Detector(str, Enum):
    content = "content"
    adaptive = "adaptive"


class MuxMode(str, Enum):
    replace = "replace"
    mix = "mix"


class Preset(str, Enum):
    small = "small"
    medium = "medium"


class TrackFormat(str, Enum):
    flac = "flac"
    wav = "wav"


# Every option that shapes the music, shared by `generate` and `score`: (name, type, typer option,
# where it goes in gvmgen.settings.ScoreSettings). Defaults and choices are ScoreSettings' own, written out
# here so that `gvmgen --help` starts without importing torch; a test holds them to the settings'.
SETTINGS_OPTIONS = [
    ("seed", int, typer.Option(0, "--seed", help="Seed for sampling (0 to 2147483647): the same seed, the same music."),
     "generation.seed"),
    ("stitch", Stitch, typer.Option(Stitch.continue_, "--stitch", help="How the windows of a long video are joined."),
     "generation.stitch"),
    ("loudness", float, typer.Option(-14.0, "--loudness", help="Target integrated loudness, LUFS, -40 to -5 "
                                     "(-14 streaming, -23 EBU R128 broadcast)."), "target_lufs"),
    ("ceiling", float, typer.Option(-1.0, "--ceiling", help="True-peak ceiling, dBTP (-9 to 0)."), "ceiling_dbtp"),
    ("mux_mode", MuxMode, typer.Option(MuxMode.replace, "--mux", help="replace the original audio, or mix the "
                                       "music over it."), "mux_mode"),
    ("duck_db", float, typer.Option(12.0, "--duck-db", help="With --mux mix: how far the original audio is lowered, dB."),
     "duck_db"),
    ("detector", Detector, typer.Option(Detector.content, "--detector", help="Shot detector (PySceneDetect)."),
     "detection.detector"),
    ("threshold", float, typer.Option(None, "--threshold", help="The shot detector's threshold (default: "
                                      "PySceneDetect's, 27 content, 3 adaptive)."), "detection.threshold"),
    ("min_shot", float, typer.Option(0.5, "--min-shot", help="Shortest shot, seconds, at any frame rate."),
     "detection.min_shot_s"),
    ("sample_rate", int, typer.Option(48000, "--sample-rate", help="Sample rate of the delivered music, Hz."),
     "delivery.sample_rate"),
    ("channels", int, typer.Option(2, "--channels", help="Channels of the delivered music (1 or 2)."),
     "delivery.channels"),
    ("track_format", TrackFormat, typer.Option(TrackFormat.flac, "--track-format", help="The lossless track "
                                               "beside each video: 24-bit flac or wav."), "delivery.track_format"),
]


SETTING = {name: option for name, _, option, _ in SETTINGS_OPTIONS}


def settings_options(command):
    """Give `command` every option of SETTINGS_OPTIONS; it receives them as one `settings` argument
    (a gvmgen.settings.ScoreSettings), so `generate` and `score` cannot drift apart."""
    signature = inspect.signature(command)
    own = [p for p in signature.parameters.values() if p.name != "settings"]
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
              for name, kind, option, _ in SETTINGS_OPTIONS]

    @functools.wraps(command)
    def with_settings(**kwargs):
        from gvmgen.settings import ScoreSettings

        given = [(option, where, kwargs.pop(name)) for name, _, option, where in SETTINGS_OPTIONS]

        def settings_of(chosen) -> ScoreSettings:
            tree: dict = {}
            for _, where, value in chosen:
                *parents, leaf = where.split(".")
                node = tree
                for parent in parents:
                    node = node.setdefault(parent, {})
                node[leaf] = value.value if isinstance(value, Enum) else value
            return ScoreSettings.from_dict(tree)

        try:
            settings = settings_of(given)
        except ValueError:  # the first option wrong alone, named (the library names the setting, not the option)
            for one in given:
                try:
                    settings_of([one])
                except ValueError as alone:
                    raise ValueError(f"{one[0].param_decls[0]}: {alone}") from None
            raise
        return command(**kwargs, settings=settings)

    with_settings.__signature__ = signature.replace(parameters=own + shared)
    return with_settings


def _local_file(text: str, command: str) -> Path:
    """A file named on the command line (a path or file:// URL) for a command that works on local files."""
    parsed = urlparse(text)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if "://" in text:
        raise ValueError(f"{text}: not a local file ({command} works on local files; `gvmgen score` reads and "
                         "writes s3:// URLs)")
    return Path(text)


@app.command()
@settings_options
def generate(
    video: str = typer.Argument(..., help="The video to score."),
    output: str = typer.Option(..., "-o", "--out", help="The scored video; the track (.flac) and report "
                             "(.report.png) are written beside it."),
    model: str = typer.Option("tiny", "--model", help="tiny (untrained, noise), small, medium, a fine-tuned "
                              "model's name, or a checkpoint directory."),
    device: str = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the output (and its track and report) if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    settings=None,
):
    """Compose music for VIDEO and write it muxed into the output (-o)."""
    import torch

    from gvmgen.media.mux import check_container
    from gvmgen.media.probe import probe
    from gvmgen.model.checkpoints import load_for_scoring
    from gvmgen.pipeline import score_video
    from storage.objects import LocalStore
    from storage.registry import resolve

    video, output = _local_file(video, "generate"), _local_file(output, "generate")
    info = probe(video)  # a bad video, or an output that cannot be written, costs nothing
    check_container(output, info.codec)
    written = [output, output.with_suffix(f".{settings.delivery.track_format}"), output.with_suffix(".report.png")]
    if any(path.exists() and path.samefile(video) for path in written):
        raise ValueError(f"{output}: would overwrite the video being scored ({video}); choose another output")
    existing = [str(path) for path in written if path.exists()]
    if existing and not overwrite:
        raise ValueError(f"{existing[0]}: exists (--overwrite replaces it)")
    LocalStore(output.absolute().parent).check_writable()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
    with console.status(f"loading model {model}"):
        loaded = load_for_scoring(resolve(None, model), device=device)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                  TimeRemainingColumn(), console=console,
                  disable=as_json or OPTIONS["quiet"] or not console.is_terminal) as bar:
        task = bar.add_task(f"scoring {video.name}", total=None)
        result = score_video(loaded, video, output, settings,
                             progress=lambda done, total: bar.update(task, completed=done, total=total))
    miss = result.loudness.miss(settings.target_lufs)
    summary = {"video": str(result.video), "track": str(result.track), "report": str(result.report),
               "duration": result.duration,
               "shots": result.shots, "frames": result.frames, "windows": result.windows, "model": model,
               "loudness_lufs": round(result.loudness.output_lufs, 2), "true_peak_dbtp": round(result.loudness.true_peak_dbtp, 2),
               "note": miss}
    if as_json:
        print(json.dumps(summary))
    elif not OPTIONS["quiet"]:
        out.print(f"wrote {result.video}, {result.track} and {result.report} "
                  f"({result.duration:.2f} s, {result.windows} window(s))")
    if miss:
        console.print(f"warning: {miss}", markup=False, highlight=False)


PREFECT_LOGGING = """\
# Written by gvmgen: Prefect's logs go to the API (the UI) and to a file, not into the terminal.
version: 1
disable_existing_loggers: False
formatters:
  standard:
    (): prefect.logging.formatters.PrefectFormatter
    format: "%(asctime)s | %(levelname)-7s | %(name)s - %(message)s"
    flow_run_fmt: "%(asctime)s | %(levelname)-7s | Flow run %(flow_run_name)r - %(message)s"
    task_run_fmt: "%(asctime)s | %(levelname)-7s | Task run %(task_run_name)r - %(message)s"
handlers:
  file: {class: logging.FileHandler, filename: "LOGFILE", formatter: standard, level: 0}
  api: {class: prefect.logging.handlers.APILogHandler, level: 0}
  worker_api: {class: prefect.logging.handlers.WorkerAPILogHandler, level: 0}
loggers:
  prefect: {level: INFO}
  prefect.extra: {level: INFO, handlers: [api], propagate: false}
  prefect.flow_runs: {level: NOTSET, handlers: [api]}
  prefect.task_runs: {level: NOTSET, handlers: [api]}
  prefect.workers: {level: NOTSET, handlers: [worker_api]}
  prefect.server: {level: WARNING}
  prefect._internal: {level: ERROR, handlers: [file], propagate: false}
  uvicorn: {level: WARNING, handlers: [file], propagate: false}
  fastapi: {level: WARNING, handlers: [file], propagate: false}
root: {level: WARNING, handlers: [file]}
"""


def _prefect_environment() -> None:
    """Prefect keeps its state under GVMGEN_HOME too, unless the user points it elsewhere; its logs
    go to GVMGEN_HOME/logs/prefect.log unless -v (or the user's own PREFECT_LOGGING_SETTINGS_PATH)."""
    from gvmgen.home import home

    embedded_prefect_environment(home() / "prefect")
    if not OPTIONS["verbose"] and "PREFECT_LOGGING_SETTINGS_PATH" not in os.environ:
        logs = home() / "logs"
        logs.mkdir(exist_ok=True)
        settings = logs / "prefect-logging.yml"
        settings.write_text(PREFECT_LOGGING.replace("LOGFILE", str(logs / "prefect.log")))
        os.environ["PREFECT_LOGGING_SETTINGS_PATH"] = str(settings)


def _prefect_ready() -> None:
    """Start Prefect's embedded state (a temporary server and its database, when no PREFECT_API_URL
    is set) under a lock: processes starting together on a fresh home would race its migration."""
    from prefect.client.orchestration import get_client

    from storage.db import first_use_lock

    with first_use_lock("prefect"), _children_in_a_session_of_their_own(), get_client(sync_client=True) as client:
        client.hello()


@contextlib.contextmanager
def _children_in_a_session_of_their_own():
    """Prefect starts its temporary server as a child in this process's group, and a terminal's Ctrl-C
    goes to the whole group: the server died with the run, whose last API calls (the interrupted run's
    state) then retried it for minutes before exiting 2. Started meanwhile, the server gets a session
    of its own; this process stops it when it exits (Prefect's atexit), SIGHUP included (see main),
    and the kernel when this process is killed outright (SIGKILL: PR_SET_PDEATHSIG). Prefect's call
    takes no such options, hence Popen wrapped for the moment of the start (on this thread, which
    lives as long as the process: the death signal follows the thread that started the child)."""
    import ctypes
    import subprocess

    popen = subprocess.Popen
    pdeathsig = {}
    if sys.platform.startswith("linux"):  # prctl is Linux's; elsewhere a SIGKILL leaves the server running
        prctl, pr_set_pdeathsig = ctypes.CDLL(None, use_errno=True).prctl, 1
        pdeathsig = {"preexec_fn": lambda: prctl(pr_set_pdeathsig, signal.SIGTERM)}

    class OwnSession(popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{"start_new_session": True, **pdeathsig, **kwargs})

    subprocess.Popen = OwnSession
    try:
        yield
    finally:
        subprocess.Popen = popen


@app.command()
def server(port: int = typer.Option(4200, "--port", help="Port of the UI and API."),
           host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every "
                                    "interface; put it behind your network's access control).")):
    """Serve the Prefect UI and API, to watch catalog runs (point workers at it with
    PREFECT_API_URL=http://HOST:PORT/api)."""
    import shutil

    _prefect_environment()
    prefect = shutil.which("prefect", path=os.path.dirname(sys.executable)) or shutil.which("prefect")
    if prefect is None:
        raise RuntimeError("the prefect command is not installed beside gvmgen")
    # The UI's page calls the API at this URL: it must be this server's own, not the default :4200.
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    os.environ["PREFECT_UI_API_URL"] = f"http://{shown}:{port}/api"
    os.execv(prefect, [prefect, "server", "start", "--host", host, "--port", str(port)])


@app.command()
@settings_options
def score(
    source: str = typer.Argument(..., help="The library: a folder, one video, file:///path or s3://bucket/prefix."),
    out_uri: str = typer.Option(..., "-o", "--out", help="Where the scored videos, tracks and reports go (folder or "
                                "s3://...; not the library, but it may lie inside it)."),
    model: str = typer.Option("tiny", "--model", help="tiny (untrained, noise), small, medium, a fine-tuned "
                              "model's name, or a checkpoint directory."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Score again the videos that failed before."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace files in the output that no run of gvmgen wrote."),
    lease_s: float = typer.Option(900, "--lease", min=LEASE_RANGE[0], max=LEASE_RANGE[1], help="Seconds a worker's "
                                  "claim on a video lasts (a crashed worker's videos are taken again after it)."),
    batch_videos: int = typer.Option(4, "--batch-videos", min=BATCH_RANGE[0], max=BATCH_RANGE[1],
                                     help="Videos composing together, their windows in the model's batches."),
    dask: str = typer.Option(None, "--dask", help="Run media work on a Dask cluster: its scheduler address, "
                             "or 'local' for a local cluster (needs prefect-dask)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    settings=None,
):
    """Score every video of a library with the score-catalog flow (Prefect, no server needed).

    A video is scored once per content, model and settings: a rerun skips what is done, and changing
    any setting scores everything again. Exit status: 0 every video of the library is scored (or being
    scored by another run at the same time); 1 some video stands failed (in this run, or earlier and
    not retried); 2 usage or infrastructure error (its unfinished videos stay pending).
    """
    run_catalog(source, out_uri, model, settings.to_dict(), retry_failed, overwrite, lease_s, batch_videos, dask,
                as_json)


def run_catalog(source: str, out_uri: str, model: str, settings: dict, retry_failed: bool, overwrite: bool,
                lease_s: float, batch_videos: int, dask: str | None, as_json: bool) -> None:
    _prefect_environment()
    from flows.score_catalog import VideosFailed, preflight, score_catalog
    from storage.objects import canonical

    with console.status(f"checking the options and loading model {model}"):
        preflight(source, out_uri, model, settings, batch_videos, lease_s)
    flow = score_catalog
    if dask:
        from prefect_dask import DaskTaskRunner

        flow = score_catalog.with_options(task_runner=DaskTaskRunner() if dask == "local" else DaskTaskRunner(address=dask))
    _prefect_ready()
    with _run_progress(disable=as_json or OPTIONS["quiet"]):
        state = flow(source, out_uri, model=model, settings=settings, retry_failed=retry_failed, overwrite=overwrite,
                     lease_s=lease_s, batch_videos=batch_videos, return_state=True)
    result = state.result(raise_on_failure=False)
    if isinstance(result, VideosFailed):
        summary = result.summary
    elif isinstance(result, BaseException):
        raise result  # usage or infrastructure: one line, exit 2 (see main)
    else:
        summary = result
    if as_json:
        print(json.dumps(summary))
    elif not OPTIONS["quiet"]:
        earlier = [f for f in summary["failures"] if f["status"] == "failed earlier"]
        out.print(f"run {summary['run']}: {summary['scored']} scored, {summary['skipped'] - summary['copied']} skipped "
                  f"(done before), {summary['copied']} copied (the same content, scored before), "
                  f"{summary['failed']} failed, {len(earlier)} failed earlier (not retried)"
                  + (f", {summary['pending']} pending (being scored elsewhere, or left for the next run)"
                     if summary["pending"] else "")
                  + f"; videos, tracks and reports (.report.png) in {out_uri}")
        for failure in summary["failures"]:
            out.print(f"  {failure['video']} ({failure['status']}): {failure['cause']}", markup=False, highlight=False)
        if summary["failures"]:
            out.print("  (a video that failed for its file is taken again once the file changes; --retry-failed "
                      "takes the failed videos again as they are)", markup=False, highlight=False)
    for note in summary.get("notes", []):
        console.print(f"warning: {note['video']}: {note['note']}", markup=False, highlight=False)
    if not summary["videos"]:
        console.print(f"warning: {canonical(source)}: no videos there (is the folder or prefix right?)", markup=False,
                      highlight=False)
    raise typer.Exit(1 if summary["failures"] else 0)


class LMMode(str, Enum):
    cross = "cross"
    full = "full"
    lora = "lora"


class Variant(str, Enum):  # gvmgen.model.config.FEATURE_TRANSFORMATIONS (a test holds them equal)
    official = "official"
    residual = "residual"
    mean_pool = "mean-pool"
    cls = "cls"


@app.command()
def finetune(
    source: str = typer.Argument(..., help="Videos with the music to learn: their own audio track, or a file "
                                 "beside each with the same name (a.mp4 + a.wav/.flac/.mp3)."),
    base: str = typer.Option("tiny", "--base", help="tiny, small, medium, or a model version's name."),
    name: str = typer.Option(..., "--name", help="The new model version's name (gvmgen score --model NAME)."),
    steps: int = typer.Option(1000, "--steps", help="Optimizer steps (at least 1)."),
    lm: LMMode = typer.Option(LMMode.cross, "--lm", help="cross: the LM's cross-attention only; full: all the "
                              "LM; lora: LoRA adapters on its self-attention."),
    batch_size: int = typer.Option(4, "--batch-size", help="Clips a step (at least 1)."),
    lr: float = typer.Option(1e-4, "--lr", help="Peak learning rate (after a linear warm-up, then cosine decay)."),
    store: str = typer.Option(None, "--store", help="Where shards and the model go (folder or s3://...; "
                              "default GVMGEN_HOME/store)."),
    variant: Variant = typer.Option(None, "--variant", help="The feature transformation (default: the base's; "
                                    "another one starts fresh)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Fine-tune a model on a catalog and register it as model version NAME (the finetune flow).

    A rerun reuses the cached clips and resumes the same training from its last checkpoint. The same
    NAME with other videos or settings trains afresh and publishes a new version of NAME (the earlier
    one stays, as NAME@TIME).
    """
    _prefect_environment()
    from flows.finetune import finetune as finetune_flow

    _prefect_ready()
    with _training_progress(name, steps, disable=as_json or OPTIONS["quiet"]):
        result = finetune_flow(source, name, base=base, steps=steps, lm=lm.value, batch_size=batch_size,
                               lr=lr, store=store, variant=variant and variant.value)
    if as_json:
        print(json.dumps(result))
    elif not OPTIONS["quiet"]:
        out.print(f"model {result['model']}: {result['videos']} videos ({result['left_out']} left out), "
                  f"{result['train_clips']} training clips; loss {result.get('train_loss')}, validation loss "
                  f"{result.get('validation_loss')}; saved to {_location(result['checkpoint'])}; score with "
                  f"`gvmgen score SOURCE --out DEST --model {result['model']}`")
        for left in result["left_out_videos"]:
            out.print(f"  left out: {left['video']}: {left['cause']}", markup=False, highlight=False)
    if "warning" in result:
        console.print(f"warning: {result['warning']}", markup=False, highlight=False)


@app.command("eval")
def evaluate(
    target: str = typer.Argument(..., help="A run id, or the source (or name) of a scored catalog."),
    model: str = typer.Option(None, "--model", help="For a catalog: whose outputs (a model name as runs list shows "
                                                     "it); by default the model of its newest output."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
):
    """Evaluate scored videos with every metric available here, and store the results in SQL.

    A catalog is evaluated by one model at a time: each video still in its library, by its newest
    output for its current content. Cut-to-onset hit rate (against shuffled cuts), seam smoothness and
    loudness range always; FAD (CLAP) and KL (AST) when their weights are in GVMGEN_HOME/metrics, else
    reported as not available.
    """
    from storage import repository as repo
    from storage.db import connect

    with connect()() as session:  # an unknown target costs nothing: checked before Prefect starts
        scope = repo.outputs_to_evaluate(session, target, model)
        what = f"run {target}" if scope.run else scope.catalog.name
    _prefect_environment()
    from flows.evaluate import evaluate as evaluate_flow

    _prefect_ready()
    with console.status(f"evaluating {what}"):
        result = evaluate_flow(target, model)
    if as_json:  # a metric that could not be measured is null, never a bare NaN (not JSON)
        print(json.dumps(_nan_as_null(result), default=str))
        return
    columns = ["video", "cut_onset_hit_rate", "shuffled_cuts", "seam_flux_ratio", "loudness_range_lu"]
    out.print(f"{what} by {result['model']}: {result['videos']} video(s)", markup=False, highlight=False)
    _emit(result["rows"] + [{"video": "(mean)", **result}], False, columns)
    for name in ("fad_clap", "kl_ast"):  # a value, or why it is not available
        out.print(f"{name.replace('_', ' ')}: {result[name]}", markup=False, highlight=False)
    for row in result["unreadable"]:
        console.print(f"warning: {row['video']} not evaluated: {row['cause']}", markup=False, highlight=False)
    out.print(EVAL_LEGEND, markup=False, highlight=False)


EVAL_LEGEND = """cut onset hit rate: the share of shot cuts with a musical onset within 0.25 s; above "shuffled cuts" (the
  same for cuts at random times), the music follows the picture's cuts. Blank: the video has no cut.
seam flux ratio: the spectral change at the seams between windows over that elsewhere; near 1, the seams
  are not heard. Blank: a single window.
loudness range lu: EBU R128 loudness range of the track. Blank: 3 s or less, or silent.
Stored in SQL (the evaluations table)."""


def _nan_as_null(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_as_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_as_null(v) for v in value]
    return value


@contextlib.contextmanager
def _progress_from_sql(poll, disable: bool, first: str):
    """A progress bar fed from the database while a flow runs: `poll(session)` returns
    (completed, total, description) or None while there is nothing to show yet."""
    import threading

    from storage.db import connect

    if disable or not console.is_terminal:
        yield
        return
    stop = threading.Event()

    def follow(bar: Progress, task) -> None:
        sessions = connect()
        while True:
            finished = stop.wait(0.5)
            with sessions() as session:
                state = poll(session)
            if state is not None:
                completed, total, description = state
                bar.update(task, completed=completed, total=total, description=description)
            if finished:  # the last frame shows where the work ended
                return

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console) as bar:
        watcher = threading.Thread(target=follow, args=(bar, bar.add_task(first, total=None)), daemon=True)
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.join()


def _run_progress(disable: bool):
    """Videos handled by the run this process starts (its row names this process as its worker),
    read from its row as it goes."""
    from flows.score_catalog import worker_id
    from storage import repository as repo
    from storage.models import Run

    me, since, seen = worker_id(), repo.utcnow(), []   # seen: the run's id, once found (then followed to its end)

    def poll(session):
        run = session.get(Run, seen[0]) if seen else repo.running(session, worker=me)
        if run is not None and run.started_at >= since:  # not a stale row of a process that had our pid
            seen[:] = [run.id]
            return (run.scored + run.skipped + run.failed + run.failed_earlier, run.videos,
                    f"run {run.id}: {run.scored} scored, {run.failed + run.failed_earlier} failed")

    return _progress_from_sql(poll, disable, "listing the library")


def _training_progress(name: str, steps: int, disable: bool):
    """Training steps of model `name`, from its metrics as they are recorded."""
    from storage import repository as repo

    since = repo.utcnow()

    def poll(session):
        last = repo.latest_training_step(session, name, since)
        if last:
            return last.step, steps, f"training {name}: loss {last.loss:.3f}"

    return _progress_from_sql(poll, disable, "building the training clips")


@app.command("inspect")
def inspect_video(
    video: str = typer.Argument(..., help="The video to look at."),
    detector: Detector = SETTING["detector"],
    threshold: float = SETTING["threshold"],
    min_shot: float = SETTING["min_shot"],
    as_json: bool = typer.Option(False, "--json", help="Print everything as JSON."),
):
    """Show what the pipeline sees in VIDEO: timing, orientation, shots and the frames it would use."""
    from gvmgen.media.frames import ShotDetection, analyse

    video = _local_file(video, "inspect")
    detection = ShotDetection(detector.value, threshold, min_shot)
    with console.status(f"analysing {video.name}"):
        report = analyse(video, size=32, detection=detection).to_json()
    if as_json:
        print(json.dumps(report))
        return
    out.print(f"{video}: {report['duration']:.3f} s from {report['start']:.3f} s, {report['width']}x{report['height']} "
                  f"(rotation {report['rotation']}, SAR {report['sar']}), {report['fps']} fps{' VFR' if report['vfr'] else ''}, "
                  f"{report['audio_streams']} audio stream(s)")
    for i, shot in enumerate(report["shots"]):
        out.print(f"  shot {i}: {shot['start']:8.3f} - {shot['end']:8.3f} s")
    out.print(f"  {len(report['frames'])} frames")


@weights_app.command("fetch")
def weights_fetch(name: Preset = typer.Argument(..., help="Which pretrained preset to download.")):
    """Download CLIP ViT-L/14-336 and MusicGen (with EnCodec) into GVMGEN_HOME (needs network)."""
    from gvmgen.model.checkpoints import fetch_weights

    for path in fetch_weights(name.value):
        out.print(f"fetched {path}")


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):   # not measured: blank, as in JSON
        return ""
    if isinstance(value, datetime):  # stored in UTC, to the second
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return str(value)


def _emit(rows: list[dict], as_json: bool, columns: list[str], fold: tuple[str, ...] = ()) -> None:
    """Rows as JSON, or as a table whose columns keep their values whole; those in `fold` (URIs,
    causes) wrap when the terminal is narrow, and a pipe gets lines as long as they need."""
    if as_json:
        print(json.dumps(rows, default=str))
        return
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    for i, column in enumerate(columns):  # on a narrow terminal, the others wrap at their spaces, never within a word
        title = column.replace("_", " ")
        words = [len(w) for text in (title, *([] if column in fold else (r[i] for r in cells))) for w in text.split()]
        table.add_column(title, overflow="fold", min_width=max(words))
    for row in cells:
        table.add_row(*row)
    (out if out.is_terminal else Console(soft_wrap=True, width=100_000)).print(table)


@runs_app.command("list")
def runs_list(limit: int = typer.Option(20, "--limit", help="How many of the latest runs."),
              as_json: bool = typer.Option(False, "--json", help="Print the runs as JSON.")):
    """The latest catalog runs (times in UTC)."""
    from storage import repository as repo
    from storage.db import connect

    with connect()() as session:
        rows = [{"id": r.id, "status": r.status, "started": r.started_at, "finished": r.finished_at,
                 "took": _took(r.started_at, r.finished_at), "scored": r.scored, "skipped": r.skipped - r.copied,
                 "copied": r.copied, "failed": r.failed, "failed_earlier": r.failed_earlier, "source": r.parameters.get("source"),
                 "output": r.parameters.get("output"), "model": _model_of(session, r), "cause": r.cause}
                for r in repo.runs(session, limit)]
    _emit(rows, as_json, ["id", "status", "started", "scored", "skipped", "copied", "failed", "failed_earlier", "model",
                          "source", "output", "cause"], fold=("source", "output", "cause"))


def _model_of(session, run) -> str:
    """The model version a run scored with, by its name now: NAME@TIME once NAME was published again."""
    from storage.models import ModelVersion

    return session.get(ModelVersion, run.model_version_id).name


def _took(started: datetime, finished: datetime | None) -> str | None:
    """1h 02m, 3m 07s, 12s."""
    if finished is None:
        return None
    seconds = round((finished - started).total_seconds())
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h {rest // 60:02d}m" if hours else f"{rest // 60}m {rest % 60:02d}s" if rest >= 60 else f"{rest}s"


@runs_app.command("show")
def runs_show(run_id: int = typer.Argument(...), as_json: bool = typer.Option(False, "--json")):
    """One run: what it scored with, its counts and the videos that failed, with their causes."""
    from gvmgen.settings import ScoreSettings
    from storage import repository as repo
    from storage.db import connect
    from storage.models import Run

    with connect()() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise ValueError(f"no run {run_id} (gvmgen runs list shows them)")
        report = {"id": run.id, "status": run.status, "cause": run.cause, "worker": run.worker,
                  "model": _model_of(session, run),
                  "started": run.started_at, "finished": run.finished_at, "parameters": run.parameters,
                  "scored": run.scored, "skipped": run.skipped - run.copied, "copied": run.copied, "failed": run.failed,
                  "failed_earlier": run.failed_earlier,
                  "failures": [{"video": v.key, "stage": e.stage, "cause": repo.cause_for(v, e)}
                               for e, v in repo.errors(session, run)],
                  "failed_earlier_videos": [{"video": v.key, "stage": e.stage, "cause": repo.cause_for(v, e)}
                                            for e, v in repo.failed_before(session, run)]}
    if as_json:
        print(json.dumps(report, default=str))
        return
    parameters = report["parameters"]
    changed = _differences(ScoreSettings().to_dict(), parameters.get("settings") or {})
    cause = report["cause"] or ""
    lines = [("status", cause if cause.startswith(report["status"]) else f"{report['status']}: {cause}".rstrip(": ")),
             ("started", f"{_cell(report['started'])} UTC by {report['worker'] or 'unknown'}"),
             ("finished", f"{_cell(report['finished'])} UTC, after {_took(report['started'], report['finished'])}"
                          if report["finished"] else "not yet"),
             ("source", parameters.get("source")), ("output", parameters.get("output")),
             ("model", report["model"]),
             ("settings", ", ".join(f"{k}={v}" for k, v in changed.items()) or "the defaults"),
             ("videos", f"{report['scored']} scored, {report['skipped']} skipped (done before), {report['copied']} "
                        f"copied (the same content, scored before), {report['failed']} failed, "
                        f"{report['failed_earlier']} failed earlier")]
    out.print(f"run {report['id']}", markup=False, highlight=False)
    for name, value in lines:
        out.print(f"  {name:9} {value}", markup=False, highlight=False)
    for title, failures in (("failed videos:", report["failures"]),
                            ("failed earlier, not retried (--retry-failed takes them again):",
                             report["failed_earlier_videos"])):
        if failures:
            out.print(title, markup=False, highlight=False)
        for failure in failures:
            out.print(f"  {failure['video']} ({failure['stage']}): {failure['cause']}", markup=False, highlight=False)


def _differences(defaults: dict, given: dict, prefix: str = "") -> dict[str, object]:
    """The settings in `given` that differ from `defaults`, by dotted name (generation.seed=7)."""
    found = {}
    for key, value in given.items():
        if isinstance(value, dict):
            found.update(_differences(defaults.get(key) or {}, value, f"{prefix}{key}."))
        elif defaults.get(key, object()) != value:
            found[f"{prefix}{key}"] = value
    return found


class VideoStatus(str, Enum):
    new = "new"
    pending = "pending"
    done = "done"
    failed = "failed"
    removed = "removed"   # gone from its library since it was recorded


@videos_app.command("list")
def videos_list(status: VideoStatus = typer.Option(None, "--status", help="Only videos of this status."),
                catalog: str = typer.Option(None, "--catalog", help="Only the videos of this catalog (its source "
                                            "or name, as runs list shows it)."),
                as_json: bool = typer.Option(False, "--json", help="Print the videos as JSON.")):
    """Videos of every catalog (a fine-tuning's too), each with its status as its catalog's latest run
    sees it (that run's model, settings and output: done once its scored copy is delivered there) and,
    for failed ones, the stage and cause of the failure."""
    from sqlalchemy import select

    from storage import repository as repo
    from storage.db import connect
    from storage.models import Catalog

    with connect()() as session:
        only = repo.find_catalog(session, catalog) if catalog else None
        if catalog and only is None:
            raise ValueError(f"--catalog {catalog}: no such catalog (gvmgen runs list shows the sources)")
        names = dict(session.execute(select(Catalog.id, Catalog.name)).all())
        rows = [{"id": v.id, "catalog": names[v.catalog_id], "key": v.key, "status": s, "duration": v.duration,
                 "source": v.source_uri, "stage": e.stage if e else None, "cause": repo.cause_for(v, e) if e else None}
                for v, s, e in repo.videos(session, status.value if status else None, only)]
    columns = ["id", "key", "status", "duration", "stage", "cause"]
    _emit(rows, as_json, columns if only else ["id", "catalog", *columns[1:]], fold=("catalog", "key", "cause"))


models_app = typer.Typer(help="Model versions: presets, checkpoint folders and fine-tuned models.", **PLAIN)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json", help="Print the models as JSON.")):
    """Every model that scored or was published, newest first. A fine-tuned model published again
    under its name keeps its earlier version as NAME@TIME (its outputs and folder stay)."""
    from storage import repository as repo
    from storage.db import connect

    with connect()() as session:
        rows = [{"name": m.name, "kind": "preset" if m.checkpoint_uri.startswith("preset:") else
                 "published" if m.base else "folder", "base": m.base, "created": m.created_at,
                 "steps": m.metrics.get("steps"), "train_loss": m.metrics.get("train_loss"),
                 "validation_loss": m.metrics.get("validation_loss"), "checkpoint": _location(m.checkpoint_uri)}
                for m in repo.model_versions(session)]
    _emit(rows, as_json, ["name", "kind", "base", "created", "steps", "train_loss", "validation_loss", "checkpoint"],
          fold=("checkpoint",))


def _location(uri: str) -> str:
    """A URI as people type it: a local file:// URI as its plain path, others as they are."""
    return unquote(urlparse(uri).path) if uri.startswith("file://") else uri


@app.command("retry-failed")
def retry_failed(run_id: int = typer.Argument(..., help="The run whose failed videos to score again.")):
    """Run the catalog of RUN again with the same parameters, taking its failed videos again."""
    from storage.db import connect
    from storage.models import Run

    with connect()() as session:
        run = session.get(Run, run_id)
        if run is None:
            raise ValueError(f"no run {run_id} (gvmgen runs list shows them)")
        params = dict(run.parameters)
    if "settings" not in params:  # a run of gvmgen 0.1 recorded only these two
        params["settings"] = {"generation": {k: params[k] for k in ("stitch", "seed") if k in params}}
    run_catalog(params["source"], params["output"], params.get("model", "tiny"), params["settings"],
                retry_failed=True, overwrite=False, lease_s=params.get("lease_s", 900),
                batch_videos=params.get("batch_videos", 4), dask=None, as_json=False)


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="The revision to migrate to.")):
    """Apply the schema migrations (the embedded SQLite database is also migrated on first use)."""
    from storage.db import database_url, upgrade

    upgrade(database_url(), revision)
    out.print(f"database at revision {revision}")


def one_line(error: BaseException) -> str:
    """One line for an error: its own message where it names the input and the cause, else its type
    too. A database error names the server, never the password (SQLAlchemy hides it)."""
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(error, SQLAlchemyError):
        cause = str(getattr(error, "orig", None) or error)
        return f"the database is unreachable or refused: {type(error).__name__}: {cause.strip().splitlines()[0]}"
    text = (str(error).strip().splitlines() or [""])[0]
    if isinstance(error, (ValueError, OSError, RuntimeError)) and text:
        return text
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _terminate(signum, frame):
    OPTIONS["terminated"] = signal.Signals(signum)
    raise KeyboardInterrupt(signal.Signals(signum).name)  # ends a command as Ctrl-C does: leases released, runs marked


def main():
    """Every error is one line on stderr: usage errors exit 2 (typer's message), as do expected errors;
    Ctrl-C exits 130, SIGTERM 143, SIGHUP 129 (a catalog run hands its videos back first); SIGUSR1
    prints every thread's stack on stderr and changes nothing else.
    --debug (GVMGEN_DEBUG=1) shows the traceback instead."""
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)  # a closed terminal or SSH session: the same, and the server stopped
    stacks_on_sigusr1()
    try:
        code = app(standalone_mode=False)  # returns the exit code of typer.Exit, 130 for Ctrl-C
    except typer.TyperException as e:  # a bad option or argument
        if type(e).__name__ == "NoArgsIsHelpError":
            e.show()
        else:
            # typer words a bad choice "Invalid value for '--stitch': Value error, 'x' is not one of ..."
            console.print(f"error: {e.format_message().replace(': Value error, ', ': ', 1)}", markup=False,
                          highlight=False)
        code = e.exit_code
    except Exception as e:
        if OPTIONS["debug"]:  # the traceback, and the same exit status
            traceback.print_exc()
        console.print(f"error: {one_line(e)}", markup=False, highlight=False)
        code = 2
    except BaseException as e:  # imported late: Prefect must not set up its logging before we do
        from prefect.exceptions import TerminationSignal

        if not isinstance(e, TerminationSignal):  # Prefect's own SIGTERM handler, inside a flow run
            raise
        OPTIONS["terminated"] = signal.SIGTERM
        code = 130
    if code == 130:
        by = OPTIONS.get("terminated")  # a signal other than Ctrl-C's SIGINT
        console.print(f"error: interrupted{f' ({by.name})' if by else ''}")
        code = 128 + by if by else 130
    sys.exit(code if isinstance(code, int) else 0)
