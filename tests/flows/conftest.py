"""A real Prefect engine (a temporary local server) for the flow tests."""

import pytest


@pytest.fixture(scope="session")
def prefect_engine(tmp_path_factory):
    import os

    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):  # the CLI's limit: 30 s is not enough on a busy machine
        yield


@pytest.fixture
def recorded_outputs():
    """recorded_outputs() -> how many outputs the test's database (GVMGEN_HOME's SQLite) holds so far, read
    without migrating or locking anything: what a test waits on while a run it started goes on."""
    import os
    import sqlite3
    from contextlib import closing
    from pathlib import Path

    def count() -> int:
        database = Path(os.environ["GVMGEN_HOME"]) / "gvmgen.db"
        try:
            with closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=1)) as db:
                return db.execute("SELECT count(*) FROM outputs").fetchone()[0]
        except sqlite3.Error:
            return 0
    return count
