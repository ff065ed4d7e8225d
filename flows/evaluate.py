"""Evaluate a scored run or catalog: the metrics available on this machine, per video, into SQL and a
Prefect table artifact.

Always: cut-to-onset hit rate (against shuffled cuts), seam smoothness (spectral flux at the window
seams against elsewhere), loudness range. With local weights: FAD (CLAP) and KL (AST) against the
videos' own audio tracks as the reference; without them, each is recorded as not available, with why.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from prefect import flow, task
from prefect.artifacts import create_table_artifact

from gvmgen.files import scratch
from gvmgen.media.audio import decode_audio
from gvmgen.metrics import MetricUnavailable
from gvmgen.metrics.distribution import ast_classifier, clap_embedder, fad, mean_kl
from gvmgen.metrics.weightfree import cut_onset_alignment, loudness_range, seam_smoothness
from gvmgen.windows import seams as window_seams
from storage import repository as repo
from storage.models import Catalog, ModelVersion, Output, Run, Video
from storage.objects import locate

from .score_catalog import RETRY, VIDEO_FAULTS, describe, sessions

RATE = 22050  # librosa's rate: onsets and flux are computed there


def _download(uri: str, work: Path) -> Path:
    store, key = locate(uri)
    return store.download(key, work)


@task(**RETRY)
def evaluate_output(output_id: int, key: str) -> dict:
    """One output's metrics, in a row named `key` (the video evaluated: a copy is named for itself). A
    track that cannot be read (deleted, damaged) gives a row with the cause, and the others are evaluated."""
    with sessions() as session:
        output = session.get(Output, output_id)
        video = session.get(Video, output.video_id)
        cuts = [s.start for s in repo.shots_of(session, video)[1:]]
        seams = window_seams(output.windows or [])
        try:
            with tempfile.TemporaryDirectory(dir=scratch()) as work:
                audio = decode_audio(_download(output.track_uri, Path(work)), RATE)
        except VIDEO_FAULTS as e:
            return {"video": key, "cause": describe(e, output.track_uri)}
        row = {"video": key}
        if cuts:
            hits = cut_onset_alignment(audio, RATE, cuts)
            repo.record_evaluation(session, "cut_onset_hit_rate", hits.hit_rate, output=output, baseline=hits.baseline,
                                   details={"baseline_std": hits.baseline_std, "cuts": hits.cuts, "onsets": hits.onsets})
            row.update(cut_onset_hit_rate=round(hits.hit_rate, 3), shuffled_cuts=round(hits.baseline, 3))
        if seams:
            smooth = seam_smoothness(audio, RATE, seams)
            repo.record_evaluation(session, "seam_flux_ratio", smooth.ratio, output=output,
                                   details={"at_seams": smooth.flux_at_seams, "elsewhere": smooth.flux_elsewhere})
            row["seam_flux_ratio"] = round(smooth.ratio, 3)
        lra = loudness_range(audio, RATE)
        repo.record_evaluation(session, "loudness_range_lu", lra, output=output)
        row["loudness_range_lu"] = round(lra, 2)
        return row


def _load_or_why(load):
    try:
        return load(), None
    except MetricUnavailable as e:
        return None, str(e)


@task
def distribution_metrics(whose: dict, output_ids: list[int]) -> dict:
    """FAD and KL of the generated tracks against the videos' own audio, where weights and audio exist.
    The models are looked for first: without them nothing is downloaded."""
    models = {"fad_clap": _load_or_why(clap_embedder), "kl_ast": _load_or_why(ast_classifier)}
    pairs = []
    with sessions() as session, tempfile.TemporaryDirectory(dir=scratch()) as work:
        if any(model for model, _ in models.values()):
            for output_id in output_ids:
                output = session.get(Output, output_id)
                video = session.get(Video, output.video_id)
                if video.audio_streams:
                    try:   # a source gone from its library since, or damaged: left out of the reference
                        original = _download(video.source_uri, Path(work) / str(output_id))
                        generated = _download(output.track_uri, Path(work) / str(output_id))
                        pairs.append((decode_audio(original, RATE), decode_audio(generated, RATE)))
                    except VIDEO_FAULTS:
                        continue
        reference, generated = [r for r, _ in pairs], [g for _, g in pairs]
        compute = {"fad_clap": lambda embed: fad(reference, generated, RATE, embed),
                   "kl_ast": lambda classify: mean_kl(reference, generated, RATE, classify)}
        scope = repo.EvaluationScope(session.get(Run, whose["run"]) if whose["run"] else None,
                                     session.get(Catalog, whose["catalog"]) if whose["catalog"] else None,
                                     session.get(ModelVersion, whose["model"]), [])
        results = {}
        for metric, (model, why) in models.items():
            if model is not None and not pairs:
                why = "not available: no scored video has an audio track to compare with"
            value = compute[metric](model) if why is None else None
            repo.record_evaluation(session, metric, value, scope=scope, details={"why": why} if why else {})
            results[metric] = value if why is None else why
    return results


@flow(name="evaluate")
def evaluate(target: str, model: str | None = None) -> dict:
    """`target`: a run id, or the source URI (or name) of a scored catalog, evaluated by one model's
    outputs (`model`; by default the one of its newest output)."""
    with sessions() as session:  # decided once: what later tasks record against is this, by id
        scope = repo.outputs_to_evaluate(session, str(target), model)
        found, model = [(o.id, v.key) for o, v in scope.found], scope.model.name
        whose = {"run": scope.run.id if scope.run else None, "catalog": scope.catalog.id if scope.catalog else None,
                 "model": scope.model.id}
    results = [f.result() for f in [evaluate_output.submit(output_id, key) for output_id, key in found]]
    rows = [r for r in results if "cause" not in r]
    unreadable = [r for r in results if "cause" in r]
    read = {output_id for (output_id, _), r in zip(found, results) if "cause" not in r}
    overall = distribution_metrics(whose, sorted(read))
    summary = {"videos": len(rows), "model": model, "unreadable": unreadable}
    for key in ("cut_onset_hit_rate", "shuffled_cuts", "seam_flux_ratio", "loudness_range_lu"):
        values = [r[key] for r in rows if key in r and np.isfinite(r[key])]
        summary[key] = round(float(np.mean(values)), 3) if values else None
    means = {k: v for k, v in summary.items() if k not in ("videos", "model", "unreadable")}
    create_table_artifact(rows + [{"video": "(mean)", **means}] + unreadable, key="evaluation",
                          description=f"{target} by {model}: {overall}")
    return {**summary, **overall, "rows": rows}
