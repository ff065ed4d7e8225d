import os
import tempfile
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"

# huggingface_hub reads these once, on import: the tests must never see a real cache or network.
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="gvmgen-test-hf-")
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own GVMGEN_HOME."""
    monkeypatch.setenv("GVMGEN_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="session")
def tiny_model():
    from gvmgen.model.checkpoints import load_model

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    return load_model("tiny")


@pytest.fixture(scope="session")
def fixtures() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"shared fixtures not found at {FIXTURES}")
    return FIXTURES
