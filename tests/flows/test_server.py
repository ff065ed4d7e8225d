"""Against a real `prefect server` on 127.0.0.1 (started by `gvmgen server`): the deployments of
prefect.yaml register with their schedule, and a catalog run is read back through the API."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory, free_port):
    port, home = free_port(), tmp_path_factory.mktemp("server")
    env = {**os.environ, "GVMGEN_HOME": str(home / "gvmgen"), "PREFECT_HOME": str(home / "prefect"),
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "cli", "server", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline, healthy = time.time() + 120, False
        while time.time() < deadline and not healthy:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
                    healthy = response.status == 200
            except OSError:
                time.sleep(0.5)
        assert healthy, "prefect server did not answer /api/health"
        yield {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)


def _client(env):
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return SyncPrefectClient(env["PREFECT_API_URL"]), temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]})


@pytest.mark.slow
def test_deploy_all_registers_both_deployments_with_the_nightly_schedule(prefect_server, tmp_path):
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent))
    env = {**prefect_server, "GVMGEN_PROJECT_DIR": str(ROOT)}
    pool = subprocess.run([prefect, "work-pool", "create", "gpu", "--type", "process"], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    assert pool.returncode == 0, pool.stdout + pool.stderr
    deploy = subprocess.run([prefect, "--no-prompt", "deploy", "--all"], env=env, cwd=ROOT, capture_output=True,
                            text=True)
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]

    client, settings = _client(prefect_server)
    with settings, client:
        found = {d.name: d for d in client.read_deployments()}
    assert set(found) == {"score-catalog", "finetune"}
    nightly = found["score-catalog"]
    assert nightly.work_pool_name == "gpu" and nightly.parameters["model"] == "small"
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in nightly.schedules] == [("0 2 * * *", "UTC", True)]
    assert found["finetune"].work_pool_name == "gpu" and not found["finetune"].schedules


@pytest.mark.slow
def test_a_catalog_run_is_read_back_through_the_api(prefect_server, fixtures, tmp_path):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId

    library = tmp_path / "library"
    library.mkdir()
    for name in ("counter", "delayed_start", "fades"):
        shutil.copy(fixtures / "video" / f"{name}.mp4", library / f"{name}.mp4")
    (library / "broken.mp4").write_text("not a video")
    score = subprocess.run([sys.executable, "-m", "cli", "score", str(library), "--out", str(tmp_path / "scored"),
                            "--json"], env=prefect_server, capture_output=True, text=True)
    assert score.returncode == 1, score.stderr[-3000:]
    run_id = json.loads(score.stdout.strip().splitlines()[-1])["run"]

    from storage.db import connect
    from storage.models import Run

    os.environ["GVMGEN_HOME"] = prefect_server["GVMGEN_HOME"]
    with connect()() as session:
        flow_run_id = session.get(Run, run_id).flow_run_id
    client, settings = _client(prefect_server)
    with settings, client:
        flow_run = client.read_flow_run(flow_run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
    assert flow_run.state.is_completed()
    names = [t.name.rsplit("-", 1)[0] for t in tasks]
    assert names.count("prepare_video") == 4 and names.count("finish_video") == 3
    assert 1 <= names.count("compose_music") <= 3                 # ready videos share a batch
    assert all(t.state.is_completed() for t in tasks)            # a bad video is a recorded failure, not a crash
    by_key = {a.key: a for a in artifacts}
    assert {"score-catalog-progress", "score-catalog-results", "score-catalog-failures"} <= set(by_key)
    rows = json.loads(by_key["score-catalog-results"].data)
    assert sorted(r["status"] for r in rows) == ["failed", "scored", "scored", "scored"]
    assert "broken.mp4" in by_key["score-catalog-failures"].data
    assert sorted(p.name for p in (tmp_path / "scored").glob("*.report.png")) == [
        "counter.report.png", "delayed_start.report.png", "fades.report.png"]
