import os
import socket
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


@pytest.fixture(scope="session")
def free_port():
    """A function that returns a free TCP port on 127.0.0.1."""
    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    return pick


@pytest.fixture(scope="session")
def s3_endpoint(free_port):
    from moto.server import ThreadedMotoServer

    os.environ.update(AWS_ACCESS_KEY_ID="testing-key-id", AWS_SECRET_ACCESS_KEY="testing-secret-key",
                      AWS_DEFAULT_REGION="us-east-1")
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


_buckets = iter(range(10_000))


@pytest.fixture
def bucket(s3_endpoint):
    import boto3

    name = f"bucket-{next(_buckets)}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def gvmgen():
    """Runs the command line as a user does (`gvmgen ARGS`, here `python -m cli`); returns the
    CompletedProcess, or the Popen with `background=True`."""
    import subprocess
    import sys

    def run(*args, env=None, background=False, **kw):
        command = [sys.executable, "-m", "cli", *map(str, args)]
        # a Prefect home of the test's own (the flow tests' harness may have set one for the session)
        full_env = {**os.environ, "PREFECT_HOME": os.path.join(os.environ["GVMGEN_HOME"], "prefect"), **(env or {})}
        if background:
            return subprocess.Popen(command, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True, **kw)
        return subprocess.run(command, env=full_env, capture_output=True, text=True, **kw)
    return run
