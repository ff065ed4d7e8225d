"""Metrics of scored videos: weight-free (cuts vs. onsets, seams, loudness range), embedding-based
(FAD, KL: need local weights, and say so when they are missing), and the paper's trainable CMR and TA
evaluation models."""


class MetricUnavailable(RuntimeError):
    """A metric whose model weights are not on this machine; the message says which and where."""
