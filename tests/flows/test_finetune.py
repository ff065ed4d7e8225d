"""The finetune flow on the shared fixtures: music muxed onto the videos (and one paired by name),
a model version registered, and score_catalog scoring with it by name."""

import shutil
import subprocess

import pytest
import torch
from sqlalchemy import select


def _mux(video, music, out, seconds):
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(video), "-stream_loop", "-1", "-i", str(music),
                    "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", "-t", str(seconds), str(out)],
                   check=True)


@pytest.mark.slow
def test_finetune_builds_shards_trains_registers_and_score_catalog_uses_it(prefect_engine, fixtures, tmp_path):
    from flows.finetune import drop_superseded, finetune
    from flows.score_catalog import cached_model, score_catalog
    from gvmgen.model.checkpoints import load_model
    from storage.db import connect
    from storage.models import ModelVersion, Output, TrainingClip, TrainingMetric

    library, store = tmp_path / "library", tmp_path / "store"
    library.mkdir()
    _mux(fixtures / "video" / "testvideo.mp4", fixtures / "music" / "electronic.mp3", library / "cuts.mp4", 24)
    (library / "fades.mp4").write_bytes((fixtures / "video" / "fades.mp4").read_bytes())
    (library / "fades.mp3").write_bytes((fixtures / "music" / "bach.mp3").read_bytes())   # paired by name
    (library / "silent.mp4").write_bytes((fixtures / "video" / "counter.mp4").read_bytes())  # no music at all

    result = finetune(str(library), "studio-v1", base="tiny", steps=6, batch_size=2, checkpoint_every=3,
                      eval_every=3, store=str(store), variant="residual")
    assert (result["videos"], result["left_out"]) == (2, 1)
    assert result["variant"] == "residual" and result["validation_spread"] > 0
    assert result["train_clips"] + result["validation_clips"] == 2 and result["validation_clips"] == 1
    assert result["train_loss"] > 0 and 0 <= result["validation_accuracy"] <= 1
    with connect()() as session:
        clips = session.scalars(select(TrainingClip)).all()
        version = session.scalar(select(ModelVersion).where(ModelVersion.name == "studio-v1"))
        metrics = session.scalars(select(TrainingMetric)).all()
        steps = {(m.step, m.split) for m in metrics}
        spreads = {m.split: m.spread for m in metrics}
    assert sorted((c.start, round(c.end)) for c in clips) == [(0.0, 10), (0.0, 24)]
    assert {c.split for c in clips} == {"train", "validation"}
    assert steps == {(s, "train") for s in range(1, 7)} | {(0, "validation"), (3, "validation"), (6, "validation")}
    assert spreads["train"] is None and spreads["validation"] > 0   # the collapse monitor's reading
    assert version.base == "tiny" and version.metrics["steps"] == 6
    (folder,) = (store / "models" / "studio-v1").iterdir()      # a version's folder: models/NAME/TIME
    assert sorted(p.name for p in folder.iterdir()) == ["gvmgen_config.json", "loss.png", "model.safetensors"]
    assert len(list((store / "datasets").rglob("*.safetensors"))) == 2

    again = finetune(str(library), "studio-v1", base="tiny", steps=6, batch_size=2, store=str(store),
                     variant="residual")
    assert again["train_loss"] == result["train_loss"]                  # resumed at its end: nothing retrained
    with connect()() as session:
        assert len(session.scalars(select(TrainingClip)).all()) == 2     # shards were cached, not rebuilt
        assert session.scalar(select(ModelVersion).where(ModelVersion.name == "studio-v1")).id == version.id

    trained = cached_model("studio-v1")
    assert trained.config.feature_transformation == "residual"
    assert not torch.equal(trained.output_proj.weight, load_model("tiny").output_proj.weight)
    scored = score_catalog(str(library), str(tmp_path / "scored"), model="studio-v1")
    assert scored["scored"] == 3
    with connect()() as session:
        used = {o.model_version_id for o in session.scalars(select(Output))}
    assert used == {version.id}

    # The same name on a copy of the catalog with other settings, into another store, on a machine without
    # the shards: the copy trains on the clips cut for the original (by content, fetched from where they
    # were written), and other settings train afresh: a new version, never the old weights.
    copy = tmp_path / "copy"
    shutil.copytree(library, copy)
    shutil.rmtree(tmp_path / "home" / "datasets")
    other = finetune(str(copy), "studio-v1", base="tiny", steps=4, batch_size=2, store=str(tmp_path / "store2"),
                     variant="residual")
    assert (other["videos"], other["train_clips"] + other["validation_clips"]) == (2, 2)
    assert other["training"] != result["training"] and other["train_loss"] != result["train_loss"]
    with connect()() as session:
        versions = {v.name: v for v in session.scalars(select(ModelVersion).where(ModelVersion.name.startswith("studio-v1")))}
        curve = {m.step for m in session.scalars(select(TrainingMetric).where(TrainingMetric.model_name == other["training"]))}
    assert len(versions) == 2 and versions["studio-v1"].id != version.id and curve == {0, 1, 2, 3, 4}
    assert [len(list(f.iterdir())) for s in (store, tmp_path / "store2") for f in (s / "models" / "studio-v1").iterdir()] == [3, 3]
    trainings = tmp_path / "home" / "training"
    assert sorted(p.name for p in (trainings / "studio-v1").iterdir()) == sorted(
        r["training"].split("/")[1] for r in (result, other))                # the first written to just now: kept
    drop_superseded(trainings / other["training"], idle_s=0)
    assert [p.name for p in (trainings / "studio-v1").iterdir()] == [other["training"].split("/")[1]]

    # The paired music replaced: that video's clips are cut again with it, into a shard of their own (a
    # machine's cached shard is never of other music), and the same settings make another training; the
    # video that carries its own track keeps its clips.
    with connect()() as session:
        before = {c.content_hash: (c.music, c.shard_uri) for c in session.scalars(select(TrainingClip))}
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(fixtures / "music" / "bach.mp3"), "-af", "volume=0.5",
                    str(copy / "fades.mp3")], check=True)                           # another mix of it
    third = finetune(str(copy), "studio-v1", base="tiny", steps=4, batch_size=2, store=str(tmp_path / "store2"),
                     variant="residual")
    with connect()() as session:
        after = {c.content_hash: (c.music, c.shard_uri) for c in session.scalars(select(TrainingClip))}
    assert sorted(after[h][0] is not None for h in after) == [False, True]        # one paired, one its own track
    assert [after[h] != before[h] for h in sorted(after, key=lambda h: after[h][0] is None)] == [True, False]
    assert third["training"] != other["training"]
