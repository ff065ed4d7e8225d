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
def test_a_failed_video_fails_its_task_run_and_the_flow_run(prefect_server, gvmgen, fixtures, tmp_path):
    """Two good videos and a text file named .mp4: the flow run and the bad video's task run are Failed
    with the cause, the good ones have outputs; a second run fails again, listing the earlier failure
    and scoring nothing."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId

    library = tmp_path / "library"
    library.mkdir()
    for name in ("counter", "fades"):
        shutil.copy(fixtures / "video" / f"{name}.mp4", library / f"{name}.mp4")
    (library / "broken.mp4").write_text("not a video")
    first = gvmgen("score", library, "--out", tmp_path / "scored", "--json", env=prefect_server)
    assert first.returncode == 1, first.stderr[-3000:]
    summary = json.loads(first.stdout)
    assert (summary["scored"], summary["failed"]) == (2, 1)

    from storage.db import connect
    from storage.models import Run

    os.environ["GVMGEN_HOME"] = prefect_server["GVMGEN_HOME"]
    with connect()() as session:
        run = session.get(Run, summary["run"])
        flow_run_id, run_status = run.flow_run_id, run.status
    assert run_status == "failed"
    client, settings = _client(prefect_server)
    with settings, client:
        flow_run = client.read_flow_run(flow_run_id)
        deadline = time.time() + 60   # the server records task states from events, a moment after the run
        while True:
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
            if time.time() > deadline or all(t.state and t.state.is_final() for t in tasks):
                break
            time.sleep(0.2)
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
    assert flow_run.state.is_failed() and flow_run.state.message.startswith("1 of 3 videos failed")
    prepared = [t for t in tasks if t.name.startswith("prepare_video")]
    assert len(prepared) == 3 and [t.name.rsplit("-", 1)[0] for t in tasks].count("finish_video") == 2
    failed = [t for t in prepared if t.state.is_failed()]
    assert len(failed) == 1 and "broken.mp4: not a readable media file" in failed[0].state.message
    assert all(t.state.is_completed() for t in tasks if t not in failed)
    by_key = {a.key: a for a in artifacts}
    assert {"score-catalog-progress", "score-catalog-results", "score-catalog-failures"} <= set(by_key)
    rows = json.loads(by_key["score-catalog-results"].data)
    assert sorted(r["status"] for r in rows) == ["failed", "scored", "scored"]
    assert "broken.mp4" in by_key["score-catalog-failures"].data
    assert sorted(p.name for p in (tmp_path / "scored").glob("*.report.png")) == ["counter.report.png", "fades.report.png"]
    written = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "scored").iterdir()}

    second = gvmgen("score", library, "--out", tmp_path / "scored", env=prefect_server)
    assert second.returncode == 1, second.stderr[-3000:]
    assert ("0 scored, 2 skipped (done before), 0 copied (the same content, scored before), 0 failed, "
            "1 failed earlier (not retried)") in second.stdout
    assert "broken.mp4 (failed earlier): " in second.stdout and "not a readable media file" in second.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "scored").iterdir()} == written


@pytest.mark.slow
def test_the_ui_of_a_server_on_another_port_calls_its_own_api(gvmgen, free_port, tmp_path):
    port = free_port()
    proc = gvmgen("server", "--port", port, background=True)
    try:
        deadline, settings = time.time() + 120, None
        while time.time() < deadline and settings is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui-settings", timeout=2) as response:
                    settings = json.load(response)
            except OSError:
                time.sleep(0.5)
        assert settings is not None, "the server did not answer /ui-settings"
        assert settings["api_url"] == f"http://127.0.0.1:{port}/api"
    finally:
        os.killpg(proc.pid, 15)
        proc.communicate(timeout=30)
