"""Tracking-server load: N jobs logging at once through one MLflow server, the way dlexp's jobs log.

Each job makes its run, one nested run per fold, logs each epoch's four metrics (train_loss, val_loss,
val_acc, lr) in one request, as live logging during training would, then the fold's and the job's summary,
and ends its runs. Afterwards every metric history is read back and counted: nothing may be lost.

    python benchmarks/tracking_load.py --uri http://127.0.0.1:5000            # against a running server
    python benchmarks/tracking_load.py --compare --repeats 2                  # SQLite- vs PostgreSQL-backed

``--compare`` starts ``python -m dlexp.server`` twice on this machine, over a fresh SQLite file and over a
fresh database in the PostgreSQL of ``DLEXP_POSTGRES_URI`` (scripts/postgres.sh uri), and alternates them.
Credentials for a server with ``--auth`` come from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

HISTORY = ("train_loss", "val_loss", "val_acc", "lr")


def one_job(uri: str, experiment_id: str, job: int, folds: int, epochs: int, ready) -> dict:
    """Log one job; returns its run ids, the number of requests it made (or the error it met) and when
    it started and stopped logging (after every job's process is up: ``ready`` is a barrier)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    requests = 0
    ready.wait()
    started = time.time()
    try:
        run_id = client.create_run(experiment_id, tags={"load.job": str(job)}).info.run_id
        fold_ids = []
        for fold in range(1, folds + 1):
            fold_id = client.create_run(experiment_id, tags={"mlflow.parentRunId": run_id,
                                                             "load.fold": str(fold)}).info.run_id
            client.log_param(fold_id, "fold", fold)
            requests += 2
            for epoch in range(1, epochs + 1):
                now = int(time.time() * 1000)
                client.log_batch(fold_id, metrics=[Metric(key, 1.0 / (epoch + i), now, epoch)
                                                   for i, key in enumerate(HISTORY)])
                requests += 1
            client.log_batch(fold_id, metrics=[Metric("best_val_acc", 0.9, int(time.time() * 1000), 0)])
            client.set_terminated(fold_id)
            requests += 2
            fold_ids.append(fold_id)
        client.log_batch(run_id, metrics=[Metric("val_acc_mean", 0.9, int(time.time() * 1000), 0)])
        client.set_terminated(run_id)
        requests += 4
        return {"job": job, "run_id": run_id, "fold_ids": fold_ids, "requests": requests, "error": None,
                "started": started, "stopped": time.time()}
    except Exception as error:  # counted, not raised: the report says what failed
        return {"job": job, "run_id": None, "fold_ids": [], "requests": requests, "error": repr(error)[:300],
                "started": started, "stopped": time.time()}


def measure(uri: str, jobs: int = 8, folds: int = 5, epochs: int = 50, timeout: float = 900) -> dict:
    """Run ``jobs`` jobs at once against ``uri``; then count what the server holds.

    Raises TimeoutError if the jobs are not done within ``timeout`` seconds (a server stuck on a lock).
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment_id = client.create_experiment(f"load-{uuid.uuid4().hex[:8]}")
    context = multiprocessing.get_context("spawn")  # fresh clients, as separate jobs have
    with context.Manager() as manager, context.Pool(jobs) as pool:
        ready = manager.Barrier(jobs)  # the clock starts when every job is up and logs at once
        results = pool.starmap_async(one_job, [(uri, experiment_id, job, folds, epochs, ready)
                                               for job in range(jobs)]).get(timeout)
    seconds = max(r["stopped"] for r in results) - min(r["started"] for r in results)
    lost = 0
    for result in results:
        for fold_id in result["fold_ids"]:
            for key in HISTORY:
                lost += epochs - len(client.get_metric_history(fold_id, key))
    statuses = [run.info.status for run in client.search_runs([experiment_id], max_results=10_000)]
    requests = sum(result["requests"] for result in results)
    return {"uri": uri.split("@")[-1], "jobs": jobs, "folds": folds, "epochs": epochs, "seconds": round(seconds, 2),
            "requests": requests, "requests_per_second": round(requests / seconds, 1),
            "metric_values_per_second": round(jobs * folds * epochs * len(HISTORY) / seconds, 1),
            "runs": len(statuses), "runs_finished": statuses.count("FINISHED"), "lost_metric_values": lost,
            "errors": [result["error"] for result in results if result["error"]]}


def compare(repeats: int, jobs: int, folds: int, epochs: int, workers: int) -> list[dict]:
    """The same load through a SQLite-backed and a PostgreSQL-backed server, alternating."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from service_support import mlflow_server, new_database

    admin_uri = os.environ.get("DLEXP_POSTGRES_URI")
    if not admin_uri:
        raise SystemExit("error: set DLEXP_POSTGRES_URI (scripts/postgres.sh start; export "
                         "DLEXP_POSTGRES_URI=$(scripts/postgres.sh uri))")
    folder = Path(tempfile.mkdtemp(prefix="dlexp-load-"))
    stores = {"sqlite": f"sqlite:///{folder}/mlflow.db",
              "postgresql": new_database(admin_uri, f"dlexp_load_{uuid.uuid4().hex[:8]}")}
    results = []
    for name in stores:
        (folder / name).mkdir()
    servers = {name: mlflow_server(folder / name, store, workers=workers) for name, store in stores.items()}
    urls = {name: server.__enter__() for name, server in servers.items()}
    try:
        for _ in range(repeats):
            for name, url in urls.items():
                result = measure(url, jobs, folds, epochs)
                result["store"] = name
                print(json.dumps(result), flush=True)
                results.append(result)
    finally:
        for server in servers.values():
            server.__exit__(None, None, None)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uri", help="a running MLflow server")
    parser.add_argument("--compare", action="store_true", help="start SQLite- and PostgreSQL-backed servers")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2, help="server worker processes (--compare)")
    args = parser.parse_args()
    if args.compare:
        compare(args.repeats, args.jobs, args.folds, args.epochs, args.workers)
    elif args.uri:
        print(json.dumps(measure(args.uri, args.jobs, args.folds, args.epochs)))
    else:
        parser.error("give --uri or --compare")


if __name__ == "__main__":
    main()
