"""Fine-tune GVMGen on a catalog of videos that already carry music.

    list -> register -> per video: clips cut at shots -> frozen CLIP patch tokens + EnCodec codes
         -> a shard in object storage + its manifest rows in SQL (skipped when cached)
    -> train (under the `gpu` limit; checkpoints, exact resume) -> publish the model version

The music of a video is a file beside it with the same name (`a.mp4` + `a.wav`, .flac, .mp3, ...)
or, failing that, its own audio track. `score_catalog(model=NAME)` then scores with the result.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import (create_link_artifact, create_markdown_artifact, create_progress_artifact,
                               create_table_artifact, update_progress_artifact)
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from gvmgen.files import scratch
from gvmgen.home import home
from gvmgen.model.checkpoints import load_model, save_model, with_feature_transformation
from gvmgen.model.config import FEATURE_TRANSFORMATIONS
from gvmgen.report import write_loss_curve
from gvmgen.training.dataset import (MIN_CLIP_S, MUSIC_EXTENSIONS, build_clips, encoder_key, music_keys,
                                     paired_music_key, save_shard, split_of)
from gvmgen.training.trainer import ShardClip, Trainer, TrainSettings, collapse_warning, merge_adapters
from storage import registry
from storage import repository as repo
from storage.models import Video
from storage.objects import canonical, fetch_copy, locate, open_store

from .score_catalog import (RETRY, VIDEO_FAULTS, describe, ensure_gpu_limit, gpu_slot, list_library, register_videos,
                            sessions)


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@task(**RETRY)
def list_music(source: str) -> dict[str, str]:
    """The music files that videos of `source` may pair with (see music_keys), each with what tells it
    from a file replaced since: its ETag (S3), else its size and modification time."""
    store = open_store(source, single=True)
    found = (store.list(MUSIC_EXTENSIONS) if store.only is None   # one video: the files it would pair with
             else filter(None, map(store.info, music_keys(store.only))))
    return {o.key: o.etag or f"{o.size}:{o.modified.timestamp()}" for o in found}


_LOADING = threading.Lock()


@functools.lru_cache(maxsize=1)
def _encoders(spec: str):
    """The base model whose frozen CLIP and EnCodec cut the clips: loaded once for all the videos."""
    return load_model(spec, device=_device())


@task(cache_policy=NO_CACHE)
def build_shard(video_id: int, source: str, store: str, base: str, music: dict[str, str], clip_s: float | None) -> dict:
    """One video's clips (up to `clip_s`, default the model's segment duration) as a shard in
    `store`/datasets/, recorded in the manifest; a video whose clips were cut with the music it pairs
    with now is skipped. Returns a row of the dataset table. The video's faults leave it out; any other
    (the store, the database, the machine) fails the task, and a rerun resumes."""
    with sessions() as session:
        video = session.get(Video, video_id)
        with _LOADING:
            model = _encoders(registry.resolve(session, base))
        encoders = encoder_key(model.config)
        music_key = paired_music_key(video.key, set(music))
        music_id = music[music_key] if music_key else None
        cached = repo.training_clips(session, encoders, video.content_hash)
        row = {"video": video.key, "clips": len(cached), "split": cached[0].split if cached else None,
               "status": "cached", "cause": None}
        if cached and all(c.music == music_id for c in cached):
            return row
        src = open_store(source, single=True)
        try:
            with tempfile.TemporaryDirectory(dir=scratch()) as work:
                local = src.download(video.key, Path(work) / "in")
                paired = src.download(music_key, Path(work) / "in") if music_key else None
                clips = build_clips(model, local, paired, clip_s or model.config.segment_duration)
                if not clips:
                    return {**row, "clips": 0, "status": "skipped", "cause": f"shorter than the shortest clip ({MIN_CLIP_S:g} s)"}
                # named by the music too: a machine's cached copy of a shard is never of other music
                name = video.content_hash.replace(":", "-") + (
                    f"-{hashlib.sha256(music_id.encode()).hexdigest()[:12]}" if music_id else "") + ".safetensors"
                shard_uri = open_store(store).upload(save_shard(Path(work) / name, clips), f"datasets/{encoders}/{name}")
        except VIDEO_FAULTS as e:  # one bad video never stops the dataset
            return {**row, "clips": 0, "status": "failed", "cause": describe(e, src.uri(video.key))}
        split = split_of(video.content_hash)
        repo.record_training_clips(session, encoders, video, music_id, [(c.start, c.end) for c in clips], split, shard_uri)
        return {**row, "clips": len(clips), "split": split, "status": "built"}


@task(cache_policy=NO_CACHE)
def train_model(name: str, base: str, store: str, video_ids: list[int], settings: dict,
                variant: str | None = None) -> dict:
    """Train on the manifest's clips of these videos, publish the model, draw its loss curve; warn when
    the frame tokens collapse (their spread falls below 5% of step 0's)."""
    with sessions() as session:
        model = load_model(registry.resolve(session, base), device=_device())
        if variant:
            model = with_feature_transformation(model, variant)
        encoders = encoder_key(model.config)
        clips = repo.training_set(session, encoders, video_ids)
        videos = sorted({c.content_hash for c in clips})
        if len(videos) > 1 and all(c.split == "train" for c in clips):  # a small catalog: hold one video out
            repo.move_to_validation(session, encoders, min(videos, key=lambda h: hashlib.sha256(h.encode()).digest()))
            clips = repo.training_set(session, encoders, video_ids)
        train_settings = TrainSettings(**settings)
        training = training_of(name, registry.identity(session, base), model.config.feature_transformation,
                               train_settings, clips)
    local = {uri: _cached_shard(uri, f"datasets/{encoders}/{uri.rsplit('/', 1)[-1]}") for uri in {c.shard_uri for c in clips}}
    train = [ShardClip(local[c.shard_uri], c.index) for c in clips if c.split == "train"]
    validation = [ShardClip(local[c.shard_uri], c.index) for c in clips if c.split == "validation"]
    if not train:   # every video held out (the split is by content, decided once): nothing left to validate on
        train, validation = validation, []

    progress = create_progress_artifact(0.0, key="finetune-progress", description=f"training {name}")
    history: list[dict] = []

    def on_metrics(m: dict) -> None:
        history.append(m)
        with sessions() as session:
            repo.record_metric(session, training, m["step"], m["split"], m["loss"], m["accuracy"], m.get("lr"),
                               m.get("spread"), m.get("conditioning_gain"))
        if m["split"] == "train" and (m["step"] % 10 == 0 or m["step"] == train_settings.steps):
            update_progress_artifact(progress, 100.0 * m["step"] / train_settings.steps)

    checkpoints = home() / "training" / training
    trainer = Trainer(model, train, validation, train_settings, checkpoints, on_metrics=on_metrics)
    with gpu_slot():
        merge_adapters(trainer.run())
    with sessions() as session:  # the whole curve, a resumed run's earlier steps included
        history = [{"step": m.step, "split": m.split, "loss": m.loss, "accuracy": m.accuracy, "spread": m.spread,
                    "conditioning_gain": m.conditioning_gain} for m in repo.training_metrics(session, training)]
    final = {s: next((m for m in reversed(history) if m["split"] == s), None) for s in ("train", "validation")}
    metrics = {"steps": train_settings.steps, "train_clips": len(train), "validation_clips": len(validation),
               "training": training,
               "variant": model.config.feature_transformation,
               **{f"{s}_{k}": round(m[k], 4) for s, m in final.items() if m for k in ("loss", "accuracy")},
               **{f"validation_{k}": round(final["validation"][k], 4) for k in ("spread", "conditioning_gain")
                  if final["validation"] and final["validation"][k] is not None}}
    warning = collapse_warning([m for m in history if m["split"] == "validation"])
    if warning:
        get_run_logger().warning("%s: %s", name, warning)
        create_markdown_artifact(f"## {name}: the visual side collapsed\n\n{warning}.", key="finetune-collapse")
    with tempfile.TemporaryDirectory(dir=scratch()) as work:
        folder = Path(work) / name
        save_model(model.cpu(), folder)
        write_loss_curve(folder / "loss.png", history, f"{name} (from {base}): {metrics}")
        with sessions() as session:
            row = registry.publish(session, name, base, folder, store, metrics)
        curve_uri = f"{row.checkpoint_uri}/loss.png"
    drop_superseded(checkpoints)
    create_link_artifact(curve_uri, link_text=f"loss curve of {name}", key="finetune-loss-curve")
    create_table_artifact(history, key="finetune-metrics", description=f"{name}: loss and token accuracy per step; "
                          "at each evaluation, the frame tokens' spread across frames and the conditioning gain")
    return {"model": name, "checkpoint": row.checkpoint_uri, "loss_curve": curve_uri, **metrics,
            **({"warning": warning} if warning else {})}


def training_of(name: str, base: str, variant: str, settings: TrainSettings, clips: list) -> str:
    """The training that makes model `name` (its checkpoint folder under GVMGEN_HOME/training, and its
    curve's key in SQL): `name`/ a digest of what the weights depend on: the base, the layout, the
    settings and the clips with their split. A rerun of the same training resumes it (and, finished,
    publishes the same version again); the same name given other data or settings trains afresh."""
    made_of = {"base": base, "variant": variant, "settings": settings.weights_key(),   # a clip's music when paired
               "clips": sorted((c.content_hash, c.index, c.start, c.end, c.split, *filter(None, [c.music])) for c in clips)}
    return f"{name}/{hashlib.sha256(json.dumps(made_of, sort_keys=True).encode()).hexdigest()[:16]}"


def drop_superseded(checkpoints: Path, idle_s: float = 3600) -> None:
    """Once a training of a name is published, the other trainings' checkpoints of that name (other data
    or settings, or one kept as before trainings had digests) are dropped: the name stands for this one
    now, and the disk is not filled with optimizer states. Not one written to within the last hour,
    which may still be running in another process."""
    for other in checkpoints.parent.iterdir():
        newest = max((p.stat().st_mtime for p in [other, *other.rglob("*")]), default=0)
        if other != checkpoints and time.time() - newest > idle_s:
            shutil.rmtree(other) if other.is_dir() else other.unlink()


def _cached_shard(uri: str, key: str) -> Path:
    """A shard in this machine's cache (GVMGEN_HOME/`key`), fetched the first time from where the
    manifest says it was written (the store of the run that cut it, which may not be this run's)."""
    target = home() / key
    if target.is_file():
        return target
    store, shard = locate(uri)
    return fetch_copy(store, shard, target)


@flow(name="finetune", task_runner=ThreadPoolTaskRunner(max_workers=2))
def finetune(source: str, name: str, base: str = "tiny", steps: int = 1000, store: str | None = None,
             catalog_name: str | None = None, clip_s: float | None = None, batch_size: int = 4, accumulation: int = 1,
             lr: float = 1e-4, lm: str = "cross", lora_rank: int = 16, checkpoint_every: int = 100,
             eval_every: int = 100, seed: int = 0, variant: str | None = None) -> dict:
    """Fine-tune `base` on the videos of `source` and publish the result as model version `name`.

    `store`: where shards and the model go (a folder or s3://...; default GVMGEN_HOME/store).
    `clip_s`: the longest training clip; default the base model's segment duration (30 s).
    `lm`: "cross" trains the LM's cross-attention only, "full" all of it, "lora" adds LoRA adapters.
    `variant`: the feature transformation's layout (official, residual, mean-pool, cls); default the
    base's. Another layout than the base's starts fresh; every other weight comes from the base.
    The summary carries a `warning` when the frame tokens collapsed (see collapse_warning).
    A rerun reuses every cached shard and resumes training from its last checkpoint.
    """
    started = time.perf_counter()
    source, store = canonical(source), canonical(store or home() / "store")
    settings = dict(steps=steps, batch_size=batch_size, accumulation=accumulation, lr=lr, lm=lm,
                    lora_rank=lora_rank, checkpoint_every=checkpoint_every, eval_every=eval_every, seed=seed)
    TrainSettings(**settings)  # bad settings fail here, before any work
    registry.check_name(name)
    if variant is not None and variant not in FEATURE_TRANSFORMATIONS:
        raise ValueError(f"variant must be one of {FEATURE_TRANSFORMATIONS}, got {variant!r}")
    open_store(store).check_writable()
    video_ids = register_videos(source, catalog_name or source, list_library(source))
    music = list_music(source)
    try:
        rows = [f.result() for f in [build_shard.submit(v, source, store, base, music, clip_s) for v in video_ids]]
    finally:
        _encoders.cache_clear()   # the shards are cut, or the flow stops: the memory goes back
    create_table_artifact(rows, key="finetune-dataset", description="clips per video (built, cached, failed)")
    failed = [r for r in rows if r["status"] in ("failed", "skipped")]
    if failed:
        create_markdown_artifact("## Videos left out of the training set\n\n" + "\n".join(
            f"- `{r['video']}` ({r['status']}): {r['cause']}" for r in failed), key="finetune-left-out")
    usable = [v for v, r in zip(video_ids, rows) if r["clips"]]
    if not usable:
        why = "; ".join(f"{r['video']}: {r['cause']}" for r in failed[:3]) + (f"; {len(failed) - 3} more" if len(failed) > 3 else "")
        raise ValueError(f"{source}: no video gave a training clip ({why or 'no videos'})")
    ensure_gpu_limit(1)
    result = train_model(name, base, store, usable, settings, variant)
    return {**result, "videos": len(usable), "left_out": len(failed), "seconds": round(time.perf_counter() - started, 1),
            "left_out_videos": [{"video": r["video"], "cause": r["cause"]} for r in failed]}
