"""The `gvmgen` command line."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

app = typer.Typer(help="Score videos with GVMGen: music composed for the picture.", no_args_is_help=True)
weights_app = typer.Typer(help="Pretrained weights.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")
console = Console(stderr=True)


class Stitch(str, Enum):
    continue_ = "continue"
    parallel = "parallel"


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
    device: str = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
):
    """Compose music for VIDEO and write it muxed into OUT."""
    import torch

    from .generate import GenerationSettings
    from .media.video import MediaError
    from .model.checkpoints import WeightsNotFound, load_model
    from .pipeline import score_video

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        with console.status(f"loading model {model}"):
            loaded = load_model(model, device=device)
        settings = GenerationSettings(stitch=stitch.value, seed=seed)
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
                      TimeRemainingColumn(), console=console, disable=as_json) as bar:
            task = bar.add_task(f"scoring {video.name}", total=None)
            result = score_video(loaded, video, out, settings,
                                 progress=lambda done, total: bar.update(task, completed=done, total=total))
    except (MediaError, WeightsNotFound, ValueError) as e:
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2)
    summary = {"video": str(result.video), "track": str(result.track), "duration": result.duration,
               "frames": result.frames, "windows": result.windows, "model": model}
    if as_json:
        print(json.dumps(summary))
    else:
        console.print(f"wrote {result.video} and {result.track} ({result.duration:.2f} s, {result.windows} window(s))")


@weights_app.command("fetch")
def weights_fetch(name: Preset = typer.Argument(..., help="Which pretrained preset to download.")):
    """Download CLIP ViT-L/14-336 and MusicGen (with EnCodec) into GVMGEN_HOME (needs network)."""
    from .model.checkpoints import fetch_weights

    for path in fetch_weights(name.value):
        console.print(f"fetched {path}")


def main():
    app()
