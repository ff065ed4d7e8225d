"""A real Prefect engine (a temporary local server) for the flow tests."""

import pytest


@pytest.fixture(scope="session")
def prefect_engine(tmp_path_factory):
    import os

    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield
