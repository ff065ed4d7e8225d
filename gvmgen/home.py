"""Where gvmgen keeps its state: everything lives under GVMGEN_HOME (default ./.gvmgen)."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    path = Path(os.environ.get("GVMGEN_HOME", ".gvmgen")).expanduser().resolve()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"GVMGEN_HOME: {path}: cannot be made ({e.strerror})") from None
    return path


def weights_dir() -> Path:
    """Hugging Face downloads made by `gvmgen weights fetch` (the user's own HF cache is read too)."""
    return home() / "huggingface"
