import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"

# Under pytest-xdist the cores are shared by the workers: each worker's torch, and every process it
# starts, gets its share of them (two workers with two threads each on two cores run several times slower).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# huggingface_hub reads these once, on import: the tests must never see a real cache or network.
os.environ["HF_HUB_CACHE"] = tempfile.mkdtemp(prefix="gvmgen-test-hf-")
atexit.register(shutil.rmtree, os.environ["HF_HUB_CACHE"], ignore_errors=True)
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own GVMGEN_HOME."""
    monkeypatch.setenv("GVMGEN_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="session")
def tiny_model():
    from gvmgen.model.checkpoints import load_model

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
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    os.environ.update(AWS_ACCESS_KEY_ID="testing-key-id", AWS_SECRET_ACCESS_KEY="testing-secret-key",
                      AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)  # the port it binds, never taken meanwhile
    server.start()
    yield "http://127.0.0.1:%d" % server.get_host_and_port()[1]
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


# -- a real PostgreSQL server (Debian's package, a throwaway cluster on 127.0.0.1), for the storage and flow
# tests. CI sets GVMGEN_REQUIRE_POSTGRES=1, so a missing PostgreSQL fails there instead of skipping.
def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture(scope="session")
def postgres_server(free_port):
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        if os.environ.get("GVMGEN_REQUIRE_POSTGRES"):
            pytest.fail("PostgreSQL is required (GVMGEN_REQUIRE_POSTGRES) but initdb/pg_ctl were not found")
        pytest.skip("PostgreSQL server binaries not installed")
    data = Path(tempfile.mkdtemp(prefix="gvmgen-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        pw = pwd.getpwnam("postgres")
        os.chown(data, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "gvmgen", "--no-sync"],
                   check=True, capture_output=True)
    for _ in range(3):  # a port free when picked may be taken before the server binds it: another one
        port = free_port()
        started = subprocess.run([*as_user, pg_ctl, "-D", str(data), "-w", "-l", str(data / "log"), "-o",
                                  f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                                 capture_output=True, text=True)
        if started.returncode == 0:
            break
    else:
        pytest.fail(f"PostgreSQL did not start: {started.stderr}{(data / 'log').read_text()[-2000:]}")
    try:
        yield f"postgresql+psycopg://gvmgen@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


_databases = iter(range(10_000))


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'test.db'}"
    server = request.getfixturevalue("postgres_server")
    name = f"test_{next(_databases)}"
    from sqlalchemy import create_engine, text

    admin = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE DATABASE {name}"))
    admin.dispose()
    return f"{server}/{name}"
