"""The `gvmgen` command line."""

from __future__ import annotations

import contextlib
import json
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

app = typer.Typer(help="Score videos with GVMGen: music composed for the picture.", no_args_is_help=True)
weights_app = typer.Typer(help="Pretrained weights.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")
runs_app = typer.Typer(help="Catalog runs recorded in the database.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
videos_app = typer.Typer(help="Videos recorded in the database.", no_args_is_help=True)
app.add_typer(videos_app, name="videos")
db_app = typer.Typer(help="The metadata database (SQLite under GVMGEN_HOME, or GVMGEN_DATABASE_URL).",
                     no_args_is_help=True)
app.add_typer(db_app, name="db")
console = Console(stderr=True)


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


@app.command()
def generate(
    video: Path = typer.Argument(..., help="The video to score."),
    out: Path = typer.Option(..., "-o", "--out", help="The scored video; the track is written beside it as .wav."),
    model: str = typer.Option("tiny", "--model", help="tiny (untrained, noise), small, medium, or a checkpoint directory."),
    seed: int = typer.Option(None, "--seed", help="Seed for sampling; the same seed gives the same music."),
    stitch: Stitch = typer.Option(Stitch.continue_, "--stitch", help="How windows of a long video are joined."),
    mux_mode: MuxMode = typer.Option(MuxMode.replace, "--mux", help="replace the original audio, or mix the music over it."),
    duck_db: float = typer.Option(12.0, "--duck-db", help="With --mux mix: how far the original audio is lowered."),
    loudness: float = typer.Option(-14.0, "--loudness", help="Target integrated loudness, LUFS (-23 for EBU R128)."),
    detector: Detector = typer.Option(Detector.content, "--detector", help="Shot detector (PySceneDetect)."),
    device: str = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Compose music for VIDEO and write it muxed into OUT."""
    import torch

    from .generate import GenerationSettings
    from .media.frames import ShotDetection
    from .media.probe import MediaError
    from .model.checkpoints import WeightsNotFound, load_model
    from .pipeline import ScoreSettings, score_video

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        with console.status(f"loading model {model}"):
            loaded = load_model(model, device=device)
        settings = ScoreSettings(generation=GenerationSettings(stitch=stitch.value, seed=seed),
                                 detection=ShotDetection(detector.value), target_lufs=loudness,
                                 mux_mode=mux_mode.value, duck_db=duck_db)
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TimeRemainingColumn(), console=console, disable=as_json) as bar:
            task = bar.add_task(f"scoring {video.name}", total=None)
            result = score_video(loaded, video, out, settings,
                                 progress=lambda done, total: bar.update(task, completed=done, total=total))
    except (MediaError, WeightsNotFound, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)
    summary = {"video": str(result.video), "track": str(result.track), "report": str(result.report),
               "duration": result.duration,
               "shots": result.shots, "frames": result.frames, "windows": result.windows, "model": model,
               "loudness_lufs": round(result.loudness.output_lufs, 2), "true_peak_dbtp": round(result.loudness.true_peak_dbtp, 2)}
    if as_json:
        print(json.dumps(summary))
    else:
        console.print(f"wrote {result.video}, {result.track} and {result.report} "
                      f"({result.duration:.2f} s, {result.windows} window(s))")


def _prefect_environment() -> None:
    """Prefect keeps its state under GVMGEN_HOME too, unless the user points it elsewhere."""
    import os

    from .home import home

    os.environ.setdefault("PREFECT_HOME", str(home() / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@app.command()
def server(port: int = typer.Option(4200, "--port", help="Port of the UI and API on 127.0.0.1.")):
    """Serve the Prefect UI and API on 127.0.0.1, to watch catalog runs (point workers at it with
    PREFECT_API_URL=http://127.0.0.1:PORT/api)."""
    import os
    import shutil
    import sys

    _prefect_environment()
    prefect = shutil.which("prefect", path=os.path.dirname(sys.executable)) or shutil.which("prefect")
    if prefect is None:
        console.print("[red]error:[/red] the prefect command is not installed")
        raise typer.Exit(2)
    os.execv(prefect, [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)])


@app.command()
def score(
    source: str = typer.Argument(..., help="The library: a folder, file:///path or s3://bucket/prefix."),
    out: str = typer.Option(..., "--out", help="Where the scored videos and tracks go (folder or s3://...)."),
    model: str = typer.Option("tiny", "--model", help="tiny (untrained, noise), small, medium, a fine-tuned "
                              "model's name, or a checkpoint directory."),
    stitch: Stitch = typer.Option(Stitch.continue_, "--stitch"),
    seed: int = typer.Option(0, "--seed"),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Score again the videos that failed before."),
    lease_s: float = typer.Option(900, "--lease", help="Seconds a worker's claim on a video lasts (a crashed "
                                  "worker's videos are taken again after it)."),
    batch_videos: int = typer.Option(4, "--batch-videos", help="Ready videos whose windows share the model's batches."),
    dask: str = typer.Option(None, "--dask", help="Run media work on a Dask cluster: its scheduler address, "
                             "or 'local' for a local cluster (needs prefect-dask)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
):
    """Score every video of a library with the score-catalog flow (Prefect, no server needed).

    Exit status: 0 all scored (or already done), 1 some videos failed, 2 usage or infrastructure error.
    """
    _prefect_environment()
    from flows.score_catalog import score_catalog

    flow = score_catalog
    if dask:
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            console.print("[red]error:[/red] --dask needs prefect-dask: pip install prefect-dask")
            raise typer.Exit(2)
        flow = score_catalog.with_options(task_runner=DaskTaskRunner() if dask == "local" else DaskTaskRunner(address=dask))
    try:
        with _run_progress(disable=as_json):
            summary = flow(source, out, model=model, stitch=stitch.value, seed=seed, retry_failed=retry_failed,
                           lease_s=lease_s, batch_videos=batch_videos)
    except Exception as e:  # the flow itself fails only when storage or the database does
        console.print(f"[red]error:[/red] the catalog run failed: {type(e).__name__}: {e}")
        raise typer.Exit(2)
    if as_json:
        print(json.dumps(summary))
    else:
        console.print(f"run {summary['run']}: {summary['scored']} scored, {summary['skipped']} skipped "
                      f"(done before), {summary['failed']} failed; videos, tracks (.wav) and reports "
                      f"(.report.png) in {out}")
    raise typer.Exit(1 if summary["failed"] else 0)


class LMMode(str, Enum):
    cross = "cross"
    full = "full"
    lora = "lora"


@app.command()
def finetune(
    source: str = typer.Argument(..., help="Videos with the music to learn: their own audio track, or a file "
                                 "beside each with the same name (a.mp4 + a.wav/.flac/.mp3)."),
    base: str = typer.Option("tiny", "--base", help="tiny, small, medium, or a model version's name."),
    name: str = typer.Option(..., "--name", help="The new model version's name (gvmgen score --model NAME)."),
    steps: int = typer.Option(1000, "--steps"),
    lm: LMMode = typer.Option(LMMode.cross, "--lm", help="cross: the LM's cross-attention only; full: all the "
                              "LM; lora: LoRA adapters on its self-attention."),
    batch_size: int = typer.Option(4, "--batch-size"),
    lr: float = typer.Option(1e-4, "--lr"),
    store: str = typer.Option(None, "--store", help="Where shards and the model go (folder or s3://...; "
                              "default GVMGEN_HOME/store)."),
    variant: str = typer.Option(None, "--variant", help="The feature transformation: official, residual, "
                                "mean-pool or cls (default: the base's; another one starts fresh)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Fine-tune a model on a catalog and register it as model version NAME (the finetune flow).

    A rerun reuses the cached clips and resumes training from its last checkpoint.
    """
    _prefect_environment()
    from flows.finetune import finetune as finetune_flow

    try:
        with _training_progress(name, steps, disable=as_json):
            result = finetune_flow(source, name, base=base, steps=steps, lm=lm.value, batch_size=batch_size,
                                   lr=lr, store=store, variant=variant)
    except Exception as e:
        console.print(f"[red]error:[/red] fine-tuning failed: {type(e).__name__}: {e}")
        raise typer.Exit(2)
    if as_json:
        print(json.dumps(result))
    else:
        console.print(f"model {result['model']}: {result['videos']} videos ({result['left_out']} left out), "
                      f"{result['train_clips']} training clips; loss {result.get('train_loss')}, validation loss "
                      f"{result.get('validation_loss')}; saved to {result['checkpoint']}; score with "
                      f"`gvmgen score SOURCE --out DEST --model {result['model']}`")
        if "warning" in result:
            console.print(f"[yellow]warning:[/yellow] {result['warning']}")


@app.command("eval")
def evaluate(
    target: str = typer.Argument(..., help="A run id, or the source (or name) of a scored catalog."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
):
    """Evaluate scored videos with every metric available here, and store the results in SQL.

    Cut-to-onset hit rate (against shuffled cuts), seam smoothness and loudness range always; FAD
    (CLAP) and KL (AST) when their weights are in GVMGEN_HOME/metrics, else reported as not available.
    """
    _prefect_environment()
    from flows.evaluate import evaluate as evaluate_flow

    try:
        with console.status(f"evaluating {target}"):
            result = evaluate_flow(target)
    except ValueError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)
    if as_json:
        print(json.dumps(result, default=str))
        return
    _emit(result["rows"], False, ["video", "cut_onset_hit_rate", "shuffled_cuts", "seam_flux_ratio", "loudness_range_lu"])
    console.print({k: v for k, v in result.items() if k != "rows"})


@contextlib.contextmanager
def _progress_from_sql(poll, disable: bool, first: str):
    """A progress bar fed from the database while a flow runs: `poll(session)` returns
    (completed, total, description) or None while there is nothing to show yet."""
    import threading

    from storage.db import connect

    if disable:
        yield
        return
    stop = threading.Event()

    def follow(bar: Progress, task) -> None:
        sessions = connect()
        while not stop.wait(0.5):
            with sessions() as session:
                state = poll(session)
            if state is not None:
                completed, total, description = state
                bar.update(task, completed=completed, total=total, description=description)

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
    """Videos handled by the run this command starts, read from its row as it goes."""
    from storage import repository as repo

    began = repo.utcnow()

    def poll(session):
        run = next((r for r in repo.runs(session, limit=1) if r.started_at >= began), None)
        if run is not None:
            return (run.scored + run.skipped + run.failed, run.videos,
                    f"run {run.id}: {run.scored} scored, {run.failed} failed")

    return _progress_from_sql(poll, disable, "listing the library")


def _training_progress(name: str, steps: int, disable: bool):
    """Training steps of model `name`, from its metrics as they are recorded."""
    from storage import repository as repo

    def poll(session):
        done = [m for m in repo.training_metrics(session, name) if m.split == "train"]
        if done:
            return done[-1].step, steps, f"training {name}: loss {done[-1].loss:.3f}"

    return _progress_from_sql(poll, disable, "building the training clips")


@app.command()
def inspect(
    video: Path = typer.Argument(..., help="The video to look at."),
    detector: Detector = typer.Option(Detector.content, "--detector", help="Shot detector (PySceneDetect)."),
    as_json: bool = typer.Option(False, "--json", help="Print everything as JSON."),
):
    """Show what the pipeline sees in VIDEO: timing, orientation, shots and the frames it would use."""
    from .media.frames import ShotDetection, analyse
    from .media.probe import MediaError

    try:
        with console.status(f"analysing {video.name}"):
            report = analyse(video, size=32, detection=ShotDetection(detector.value)).to_json()
    except MediaError as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)
    if as_json:
        print(json.dumps(report))
        return
    console.print(f"{video}: {report['duration']:.3f} s from {report['start']:.3f} s, {report['width']}x{report['height']} "
                  f"(rotation {report['rotation']}, SAR {report['sar']}), {report['fps']} fps{' VFR' if report['vfr'] else ''}, "
                  f"{report['audio_streams']} audio stream(s)")
    for i, shot in enumerate(report["shots"]):
        console.print(f"  shot {i}: {shot['start']:8.3f} - {shot['end']:8.3f} s")
    console.print(f"  {len(report['frames'])} frames")


@weights_app.command("fetch")
def weights_fetch(name: Preset = typer.Argument(..., help="Which pretrained preset to download.")):
    """Download CLIP ViT-L/14-336 and MusicGen (with EnCodec) into GVMGEN_HOME (needs network)."""
    from .model.checkpoints import fetch_weights

    for path in fetch_weights(name.value):
        console.print(f"fetched {path}")


def _emit(rows: list[dict], as_json: bool, columns: list[str]) -> None:
    if as_json:
        print(json.dumps(rows, default=str))
        return
    from rich.table import Table

    table = Table(*columns)
    for row in rows:
        table.add_row(*(str(row.get(c, "")) for c in columns))
    Console().print(table)


@runs_app.command("list")
def runs_list(limit: int = typer.Option(20, "--limit"), as_json: bool = typer.Option(False, "--json")):
    """The latest catalog runs."""
    from storage import repository as repo
    from storage.db import connect

    with connect()() as session:
        rows = [{"id": r.id, "status": r.status, "started": r.started_at, "finished": r.finished_at,
                 "scored": r.scored, "skipped": r.skipped, "failed": r.failed, "source": r.parameters.get("source")}
                for r in repo.runs(session, limit)]
    _emit(rows, as_json, ["id", "status", "started", "finished", "scored", "skipped", "failed", "source"])


@runs_app.command("show")
def runs_show(run_id: int = typer.Argument(...), as_json: bool = typer.Option(False, "--json")):
    """One run: its parameters, counts and the videos that failed, with their causes."""
    from storage import repository as repo
    from storage.db import connect
    from storage.models import Run

    with connect()() as session:
        run = session.get(Run, run_id)
        if run is None:
            console.print(f"[red]error:[/red] no run {run_id}")
            raise typer.Exit(2)
        report = {"id": run.id, "status": run.status, "started": run.started_at, "finished": run.finished_at,
                  "parameters": run.parameters, "scored": run.scored, "skipped": run.skipped, "failed": run.failed,
                  "failures": [{"video": v.key, "stage": e.stage, "cause": e.cause} for e, v in repo.errors(session, run)]}
    if as_json:
        print(json.dumps(report, default=str))
        return
    console.print(f"run {report['id']} ({report['status']}): {report['scored']} scored, {report['skipped']} skipped, "
                  f"{report['failed']} failed; {report['parameters']}")
    for failure in report["failures"]:
        console.print(f"  {failure['video']} ({failure['stage']}): {failure['cause']}")


@videos_app.command("list")
def videos_list(status: str = typer.Option(None, "--status", help="Only videos whose latest job has this status "
                                           "(new, pending, done, failed)."),
                as_json: bool = typer.Option(False, "--json")):
    """Videos of every catalog, with the status of their latest job."""
    from storage import repository as repo
    from storage.db import connect

    with connect()() as session:
        rows = [{"id": v.id, "key": v.key, "status": s, "duration": v.duration, "source": v.source_uri}
                for v, s in repo.videos(session, status)]
    _emit(rows, as_json, ["id", "key", "status", "duration", "source"])


@app.command("retry-failed")
def retry_failed(run_id: int = typer.Argument(..., help="The run whose failed videos to score again.")):
    """Run the catalog of RUN again with the same parameters, taking its failed videos again."""
    from storage.db import connect
    from storage.models import Run

    with connect()() as session:
        run = session.get(Run, run_id)
        if run is None:
            console.print(f"[red]error:[/red] no run {run_id}")
            raise typer.Exit(2)
        params = dict(run.parameters)
    score(params["source"], out=params["output"], model=params.get("model", "tiny"),
          stitch=Stitch(params.get("stitch", "continue")), seed=params.get("seed", 0), retry_failed=True,
          lease_s=900, batch_videos=4, dask=None, as_json=False)


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="The revision to migrate to.")):
    """Apply the schema migrations (the embedded SQLite database is also migrated on first use)."""
    from sqlalchemy.exc import SQLAlchemyError

    from storage.db import database_url, upgrade

    try:
        upgrade(database_url(), revision)
    except SQLAlchemyError as e:  # the message names the server, never the password
        console.print(f"[red]error:[/red] database unreachable or refused the migration: {e.__class__.__name__}: "
                      f"{str(e.orig if hasattr(e, 'orig') else e).splitlines()[0]}")
        raise typer.Exit(2)
    console.print(f"database at revision {revision}")


def main():
    app()
