"""FAD and KL: exact on known cases, growing with degradation, and honest when weights are missing."""

import numpy as np
import pytest

from gvmgen.media.audio import decode_audio
from gvmgen.metrics import MetricUnavailable
from gvmgen.metrics.distribution import clap_embedder, fad, frechet_distance, kl_divergence, mean_kl

RATE = 16000


def log_mel_frames(audio, rate):
    """A real (weight-free) embedding to exercise FAD with: log-mel spectrum frames."""
    import librosa

    return np.log1p(librosa.feature.melspectrogram(y=audio, sr=rate, n_mels=16)).T


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (20000, 4))
    b = rng.normal(0.5, 2, (20000, 4))
    # identity vs 4*identity covariances: 4 * (0.5^2) + 4 * (1 + 4 - 2*2) = 1 + 4 = 5
    assert frechet_distance(a, b) == pytest.approx(5.0, rel=0.05)


def test_fad_of_a_set_against_itself_is_zero_and_grows_with_noise(fixtures):
    music = [decode_audio(fixtures / "music" / name, RATE) for name in ("bach.mp3", "electronic.mp3")]
    rng = np.random.default_rng(0)
    noisy = lambda level: [(x + level * rng.normal(size=len(x))).astype(np.float32) for x in music]  # noqa: E731
    scores = [fad(music, music if level == 0 else noisy(level), RATE, embedder=log_mel_frames)
              for level in (0, 0.003, 0.03, 0.3)]
    assert scores[0] == pytest.approx(0, abs=1e-6)
    assert scores[0] < scores[1] < scores[2] < scores[3]


def test_kl_is_zero_for_equal_labels_and_positive_otherwise():
    p = np.array([0.7, 0.2, 0.1])
    assert kl_divergence(p, p) == pytest.approx(0, abs=1e-9)
    assert kl_divergence(p, np.array([0.1, 0.2, 0.7])) == pytest.approx(0.7 * np.log(7) + 0.1 * np.log(1 / 7))
    by_energy = lambda audio, rate: np.array([np.mean(audio ** 2), 0.01])  # noqa: E731
    same = [np.ones(100, np.float32)]
    assert mean_kl(same, same, RATE, classifier=by_energy) == pytest.approx(0, abs=1e-9)


def test_without_weights_the_embedding_metrics_say_they_are_not_available():
    with pytest.raises(MetricUnavailable, match="not available: no CLAP weights in .*metrics/clap"):
        clap_embedder()
