"""``python -m dlexp.server``: an MLflow tracking server over the project's store, on 127.0.0.1.

The store and artifact folder come from the same config the runs use (conf/tracking/mlflow.yaml), so the
server shows exactly what ``python -m dlexp`` logged. Runs elsewhere (other processes, cluster jobs) log
to it with ``tracking.uri=http://HOST:PORT``; it serves their artifacts too (``--serve-artifacts``).
Only ``--host`` makes it listen beyond this machine: MLflow's server has no authentication.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dlexp import PROJECT_ROOT

LOOPBACK = "127.0.0.1"


def project_store() -> tuple[str, str]:
    """The backend store URI and artifact folder that conf/tracking/mlflow.yaml points runs at."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        tracking = compose(config_name="config").tracking
    return str(tracking.uri), str(Path(tracking.artifact_location).resolve())


def server_command(port: int, host: str = LOOPBACK, backend_store_uri: str | None = None,
                   artifacts_destination: str | None = None, workers: int = 1) -> list[str]:
    """The ``mlflow server`` command line (defaults: the project's store and artifacts)."""
    if backend_store_uri is None or artifacts_destination is None:
        store, artifacts = project_store()
        backend_store_uri = backend_store_uri or store
        artifacts_destination = artifacts_destination or artifacts
    command = [sys.executable, "-m", "mlflow", "server", "--host", host, "--port", str(port),
               "--backend-store-uri", backend_store_uri,
               "--serve-artifacts", "--artifacts-destination", artifacts_destination,
               "--workers", str(workers)]
    if host != LOOPBACK:
        command += ["--allowed-hosts", "*"]  # reached by other machines under names we cannot know here
    return command


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dlexp.server", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--host", default=LOOPBACK,
                        help="interface to listen on; anything but 127.0.0.1 exposes the (unauthenticated) "
                             "server to the network, e.g. 0.0.0.0 for cluster jobs")
    parser.add_argument("--backend-store-uri", help="default: tracking.uri of conf/tracking/mlflow.yaml")
    parser.add_argument("--artifacts-destination",
                        help="default: tracking.artifact_location of conf/tracking/mlflow.yaml")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    command = server_command(args.port, args.host, args.backend_store_uri, args.artifacts_destination,
                             args.workers)
    if args.host != LOOPBACK:
        print(f"warning: the server listens on {args.host}: anyone who can reach port {args.port} can "
              "read and write every run", file=sys.stderr)
    print(f"MLflow at http://{args.host}:{args.port}", file=sys.stderr)
    # MLflow's server-side job runner (GenAI evaluation jobs, a pool of huey worker processes) is of no
    # use to dlexp's runs; without it the server starts and stops in a fraction of the time.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execv(sys.executable, command)  # the server replaces this process: Ctrl-C stops it directly


if __name__ == "__main__":
    main()
