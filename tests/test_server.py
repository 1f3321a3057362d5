"""A real ``mlflow server`` started by ``python -m dlexp.server`` on a free loopback port: an experiment and
a submitit sweep log to it over HTTP, and the runs, metrics and artifacts are read back through its REST
API."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest
from service_support import mlflow_server
from sweep_support import TINY, run_dlexp

pytestmark = pytest.mark.full  # an MLflow server process, and a submitit sweep through it


def rest(url: str, path: str, body: dict | None = None, **query) -> dict:
    """GET (or POST ``body``) one MLflow REST endpoint, the JSON answer decoded."""
    address = f"{url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(address, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The server over a fresh store; always stopped (with its whole process group) at the end."""
    folder = tmp_path_factory.mktemp("server")
    with mlflow_server(folder, f"sqlite:///{folder}/mlflow.db") as url:
        yield url, folder


def search(url: str, experiment_name: str) -> list[dict]:
    experiment = rest(url, "/api/2.0/mlflow/experiments/get-by-name", experiment_name=experiment_name)
    answer = rest(url, "/api/2.0/mlflow/runs/search",
                  {"experiment_ids": [experiment["experiment"]["experiment_id"]], "max_results": 100})
    return answer.get("runs", [])


def tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def metrics(run: dict) -> dict[str, float]:
    return {m["key"]: m["value"] for m in run["data"].get("metrics", [])}


def test_experiment_logged_to_the_server_reads_back_through_its_rest_api(server, tmp_path):
    url, folder = server
    result = run_dlexp(*TINY, f"tracking.uri={url}", "tracking.experiment_name=roundtrip",
                       f"hydra.run.dir={tmp_path}/run")
    assert result.returncode == 0, result.stderr[-3000:]

    runs = search(url, "roundtrip")
    jobs = [r for r in runs if "dlexp.config_hash" in tags(r)]
    folds = [r for r in runs if "dlexp.fold" in tags(r)]
    assert len(jobs) == 1 and len(folds) == 2
    job = jobs[0]
    assert job["info"]["status"] == "FINISHED" and {f["info"]["status"] for f in folds} == {"FINISHED"}
    assert {tags(f)["mlflow.parentRunId"] for f in folds} == {job["info"]["run_id"]}
    assert job["info"]["artifact_uri"].startswith("mlflow-artifacts:")  # the server keeps the artifacts

    # Per-epoch metrics of a fold: one value per epoch run.
    fold = folds[0]
    history = rest(url, "/api/2.0/mlflow/metrics/get-history", run_id=fold["info"]["run_id"],
                   metric_key="val_loss")["metrics"]
    assert [m["step"] for m in history] == [1, 2, 3] == list(range(1, int(metrics(fold)["epochs_run"]) + 1))

    # Artifacts: listed and downloaded through the server, equal to what the run folder holds.
    listed = rest(url, "/api/2.0/mlflow/artifacts/list", run_id=job["info"]["run_id"])["files"]
    assert {"model.pt", "summary.json", "config_resolved.yaml", "plots"} <= {f["path"] for f in listed}
    query = urllib.parse.urlencode({"path": "summary.json", "run_uuid": job["info"]["run_id"]})
    with urllib.request.urlopen(f"{url}/get-artifact?{query}", timeout=30) as response:
        served = json.loads(response.read())
    assert served == json.loads((tmp_path / "run" / "summary.json").read_text())
    assert metrics(job)["test_acc"] == pytest.approx(served["test_acc"])
    assert list((folder / "artifacts").rglob("summary.json"))  # stored under the server's artifact folder


def test_submitit_sweep_jobs_log_to_the_server_under_one_sweep_run(server, tmp_path):
    url, _ = server
    result = run_dlexp("-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", *TINY,
                       "optimizer.lr=0.01,0.001", f"tracking.uri={url}", "tracking.experiment_name=submitit",
                       f"hydra.sweep.dir={tmp_path}/sweep")
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "sweep" / ".submitit").iterdir())  # really launched through submitit

    runs = search(url, "submitit")
    sweeps = [r for r in runs if tags(r).get("dlexp.kind") == "sweep"]
    jobs = [r for r in runs if "dlexp.config_hash" in tags(r)]
    assert len(sweeps) == 1 and sweeps[0]["info"]["status"] == "FINISHED"
    assert len(jobs) == 2 and {j["info"]["status"] for j in jobs} == {"FINISHED"}
    assert {tags(j)["mlflow.parentRunId"] for j in jobs} == {sweeps[0]["info"]["run_id"]}
    swept = sorted(o for j in jobs for o in tags(j)["dlexp.overrides"].split()
                   if o.startswith("optimizer.lr"))
    assert swept == ["optimizer.lr=0.001", "optimizer.lr=0.01"]
    assert metrics(sweeps[0])["jobs_finished"] == 2
