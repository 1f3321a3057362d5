"""The team server: ``python -m dlexp.server --auth`` over a real PostgreSQL. Runs get in only with their
credentials (one line and nothing written otherwise), and 8 jobs logging at once lose nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from mlflow.tracking import MlflowClient
from service_support import mlflow_server, new_database
from sweep_support import ROOT, TINY, dlexp_env

pytestmark = pytest.mark.postgres

ADMIN = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "admin-pass-1234"}
ALICE = {"MLFLOW_TRACKING_USERNAME": "alice", "MLFLOW_TRACKING_PASSWORD": "alice-pass-1234"}


@pytest.fixture(scope="module")
def server(postgres_admin_uri, tmp_path_factory):
    """A login-protected server over a fresh PostgreSQL database, with the user alice made by the admin."""
    folder = tmp_path_factory.mktemp("team-server")
    database = new_database(postgres_admin_uri, "dlexp_test_team")
    clean = {key: "" for key in ("MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD")}
    with mlflow_server(folder, database, "--auth", "--auth-db-uri", f"sqlite:///{folder}/auth.db",
                       env={**ADMIN, **clean}, workers=2) as url:
        request = urllib.request.Request(
            f"{url}/api/2.0/mlflow/users/create", method="POST", headers=auth_header(ADMIN),
            data=json.dumps({"username": ALICE["MLFLOW_TRACKING_USERNAME"],
                             "password": ALICE["MLFLOW_TRACKING_PASSWORD"]}).encode())
        urllib.request.urlopen(request, timeout=30).read()
        yield url


def auth_header(credentials: dict[str, str]) -> dict[str, str]:
    import base64

    pair = f"{credentials['MLFLOW_TRACKING_USERNAME']}:{credentials['MLFLOW_TRACKING_PASSWORD']}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode(), "Content-Type": "application/json"}


def run_as(credentials: dict[str, str] | None, *args: str) -> subprocess.CompletedProcess:
    env = dlexp_env()
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(key, None)
    env.update(credentials or {})
    return subprocess.run([sys.executable, "-m", "dlexp", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def admin_client(url: str, monkeypatch) -> MlflowClient:
    for key, value in ADMIN.items():
        monkeypatch.setenv(key, value)
    return MlflowClient(url)


@pytest.mark.parametrize("credentials, said", [
    (None, "none were given: set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
    ({**ALICE, "MLFLOW_TRACKING_PASSWORD": "wrong"}, "those of MLFLOW_TRACKING_USERNAME=alice"),
])
def test_a_run_without_valid_credentials_stops_with_one_line_and_writes_nothing(server, tmp_path, monkeypatch,
                                                                                 credentials, said):
    result = run_as(credentials, *TINY, f"tracking.uri={server}", "tracking.experiment_name=refused",
                    f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: tracking.uri={server}: the server refused the credentials (401 Unauthorized; {said})")
    assert "Traceback" not in result.stderr
    assert admin_client(server, monkeypatch).get_experiment_by_name("refused") is None  # nothing half-written
    assert not (tmp_path / "run" / "model.pt").exists()


def test_the_server_answers_nobody_without_a_login(server):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{server}/api/2.0/mlflow/experiments/search?max_results=10", timeout=30)
    assert refused.value.code == 401


def test_a_user_with_credentials_logs_a_run_that_reads_back(server, tmp_path, monkeypatch):
    result = run_as(ALICE, *TINY, f"tracking.uri={server}", "tracking.experiment_name=alice",
                    f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 0, result.stderr[-3000:]
    client = admin_client(server, monkeypatch)
    runs = client.search_runs([client.get_experiment_by_name("alice").experiment_id])
    jobs = [r for r in runs if "dlexp.config_hash" in r.data.tags]
    folds = [r for r in runs if "dlexp.fold" in r.data.tags]
    assert len(jobs) == 1 and len(folds) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    assert jobs[0].info.user_id == "alice"  # the server knows who logged it
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert jobs[0].data.metrics["test_acc"] == pytest.approx(summary["test_acc"])
    assert all(len(client.get_metric_history(f.info.run_id, "val_loss")) == 3 for f in folds)


def test_eight_jobs_logging_at_once_into_postgres_lose_nothing(server, monkeypatch):
    for key, value in ALICE.items():
        monkeypatch.setenv(key, value)
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # also for the job processes it spawns
    from tracking_load import measure

    result = measure(server, jobs=8, folds=5, epochs=10, timeout=600)  # a server stuck on a lock: TimeoutError
    assert result["errors"] == []
    assert result["runs"] == result["runs_finished"] == 8 * (1 + 5)
    assert result["lost_metric_values"] == 0  # 8 jobs x 5 folds x 4 metrics x 10 epochs, each one counted
