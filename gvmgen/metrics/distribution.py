"""Distribution metrics against reference music: FAD and KL, with pluggable audio models.

FAD is the Frechet distance between Gaussians fitted to two sets of audio embeddings; KL compares the
label distributions an audio classifier gives a reference and a generated track. Both need pretrained
weights, loaded from local folders only (this project never downloads at evaluation time):

- embeddings: CLAP (`laion/clap-htsat-unfused` in Hugging Face format) under GVMGEN_HOME/metrics/clap,
  or any `Embedder` callable (VGGish, PANNs, ...) passed in;
- labels: the AudioSet classifier AST (`MIT/ast-finetuned-audioset-10-10-0.4593`) under
  GVMGEN_HOME/metrics/ast, or any `Classifier` callable.

Without the weights they raise MetricUnavailable naming the folder they looked in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from scipy import linalg

from ..home import home
from . import MetricUnavailable

Embedder = Callable[[np.ndarray, int], np.ndarray]     # (audio, rate) -> (N, D) embeddings
Classifier = Callable[[np.ndarray, int], np.ndarray]   # (audio, rate) -> (L,) label probabilities


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) of (N, D) embedding sets."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    if not np.isfinite(root).all():  # a singular product: nudge both covariances, as the FID code does
        eps = np.eye(len(cov_a)) * 1e-6
        root = linalg.sqrtm((cov_a + eps) @ (cov_b + eps))
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root.real))


def fad(reference: list[np.ndarray], generated: list[np.ndarray], sample_rate: int,
        embedder: Embedder | None = None) -> float:
    embed = embedder or clap_embedder()
    return frechet_distance(np.concatenate([embed(x, sample_rate) for x in reference]),
                            np.concatenate([embed(x, sample_rate) for x in generated]))


def kl_divergence(reference: np.ndarray, generated: np.ndarray, eps: float = 1e-8) -> float:
    """KL(reference || generated) of (L,) label distributions, in nats."""
    p = np.clip(reference, eps, None) / np.clip(reference, eps, None).sum()
    q = np.clip(generated, eps, None) / np.clip(generated, eps, None).sum()
    return float((p * np.log(p / q)).sum())


def mean_kl(reference: list[np.ndarray], generated: list[np.ndarray], sample_rate: int,
            classifier: Classifier | None = None) -> float:
    """The paper's KL: per (reference, generated) pair of the same video, averaged."""
    classify = classifier or ast_classifier()
    return float(np.mean([kl_divergence(classify(r, sample_rate), classify(g, sample_rate))
                          for r, g in zip(reference, generated)]))


def _weights(name: str) -> Path:
    folder = home() / "metrics" / name
    if not (folder / "config.json").is_file():
        raise MetricUnavailable(f"not available: no {name.upper()} weights in {folder} (copy a Hugging Face "
                                f"snapshot there to enable this metric)")
    return folder


def _resampled(audio: np.ndarray, rate: int, target: int) -> np.ndarray:
    import librosa

    return librosa.resample(np.asarray(audio, np.float32), orig_sr=rate, target_sr=target)


def clap_embedder() -> Embedder:
    import torch
    from transformers import ClapFeatureExtractor, ClapModel

    folder = _weights("clap")
    model, features = ClapModel.from_pretrained(folder).eval(), ClapFeatureExtractor.from_pretrained(folder)

    def embed(audio: np.ndarray, rate: int) -> np.ndarray:
        audio = _resampled(audio, rate, features.sampling_rate)
        step = 10 * features.sampling_rate  # one embedding per 10 s
        pieces = [audio[i:i + step] for i in range(0, max(1, len(audio) - step // 2), step)]
        with torch.no_grad():
            return model.get_audio_features(**features(pieces, sampling_rate=features.sampling_rate,
                                                       return_tensors="pt")).numpy()

    return embed


def ast_classifier() -> Classifier:
    import torch
    from transformers import ASTFeatureExtractor, ASTForAudioClassification

    folder = _weights("ast")
    model, features = ASTForAudioClassification.from_pretrained(folder).eval(), ASTFeatureExtractor.from_pretrained(folder)

    def classify(audio: np.ndarray, rate: int) -> np.ndarray:
        inputs = features(_resampled(audio, rate, features.sampling_rate), sampling_rate=features.sampling_rate,
                          return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0]
        return torch.sigmoid(logits).numpy()  # AudioSet is multi-label; normalised in kl_divergence

    return classify
