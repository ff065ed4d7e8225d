"""Each flow once, on tiny inputs, in the fast suite (`make test-fast`): score a catalog, evaluate the
run, fine-tune on the catalog. The slow tests take each flow through its failures and edge cases."""

import subprocess


def _clip(path, pattern: str, tone: int) -> None:
    """Six seconds (a training clip is 5 s at least) of a test pattern with a sine tone as its own music."""
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", f"{pattern}=s=96x64:r=25:d=6", "-f", "lavfi",
                    "-i", f"sine=frequency={tone}:d=6", "-c:v", "libx264", "-c:a", "aac", "-shortest", str(path)],
                   check=True)


def test_score_evaluate_and_finetune_each_run_once(prefect_engine, tmp_path):
    from flows.evaluate import evaluate
    from flows.finetune import finetune
    from flows.score_catalog import score_catalog

    library = tmp_path / "library"
    library.mkdir()
    _clip(library / "a.mp4", "testsrc", 440)
    _clip(library / "b.mp4", "smptebars", 660)

    summary = score_catalog(str(library), str(tmp_path / "scored"), model="tiny", settings={"target_lufs": -23})
    assert (summary["scored"], summary["failed"]) == (2, 0)
    assert sorted(p.name for p in (tmp_path / "scored").iterdir()) == [
        "a.flac", "a.mp4", "a.report.png", "b.flac", "b.mp4", "b.report.png"]

    evaluated = evaluate(str(summary["run"]))
    assert evaluated["videos"] == 2 and [r["video"] for r in evaluated["rows"]] == ["a.mp4", "b.mp4"]
    assert all("loudness_range_lu" in r for r in evaluated["rows"])

    tuned = finetune(str(library), "quick", base="tiny", steps=2, batch_size=1, checkpoint_every=2, eval_every=2,
                     store=str(tmp_path / "store"))
    assert (tuned["videos"], tuned["left_out"]) == (2, 0) and tuned["train_loss"] > 0
    (version,) = (tmp_path / "store" / "models" / "quick").iterdir()     # models/NAME/TIME
    assert (version / "model.safetensors").is_file()
