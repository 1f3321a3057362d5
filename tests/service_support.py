"""Real services for the cluster and team-server tests: a SLURM cluster, PostgreSQL, an MLflow server.

Nothing is faked: the tests skip (with the reason) where the services are missing, and CI
(``.ci/run``, ``DLEXP_REQUIRE_SERVICES=1``) counts such a skip as a failure (tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sweep_support import ROOT, dlexp_env

POSTGRES_SCRIPT = ROOT / "scripts" / "postgres.sh"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_cluster() -> None:
    """Skip unless a SLURM cluster answers here with a node that can run jobs."""
    if shutil.which("sbatch") is None:
        pytest.skip("no SLURM here (sbatch not found); scripts/slurm_cluster.sh start sets up a one-node cluster")
    probe = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    if probe.returncode != 0 or not {"idle", "mixed", "allocated"} & set(probe.stdout.split()):
        pytest.skip(f"no SLURM node is up (sinfo: {(probe.stderr or probe.stdout).strip()!r}); "
                    "start one with scripts/slurm_cluster.sh start")


def postgres_bin_dir() -> Path | None:
    """Where initdb and pg_ctl are (Debian keeps them out of PATH), or None."""
    if found := shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return candidates[-1].parent if candidates else None


@contextmanager
def postgres_server() -> Iterator[str]:
    """An administrator URI of a PostgreSQL: CI's (``DLEXP_POSTGRES_URI``), else a private one started with
    scripts/postgres.sh in a temporary folder for this test session; skips where there is none."""
    if uri := os.environ.get("DLEXP_POSTGRES_URI"):
        yield uri
        return
    if postgres_bin_dir() is None:
        pytest.skip("no PostgreSQL here (initdb / pg_ctl not found) and DLEXP_POSTGRES_URI is not set; "
                    "scripts/postgres.sh start installs and starts one")
    folder = Path(tempfile.mkdtemp(prefix="dlexp-postgres-"))
    folder.chmod(0o755)  # PostgreSQL runs as its own (non-root) user
    env = {**os.environ, "DLEXP_SERVICES_DIR": str(folder), "DLEXP_POSTGRES_PORT": str(free_port())}
    started = subprocess.run([str(POSTGRES_SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        pytest.fail(f"scripts/postgres.sh start failed: {started.stderr[-2000:]}")
    try:
        yield started.stdout.strip().splitlines()[-1]
    finally:
        subprocess.run([str(POSTGRES_SCRIPT), "stop"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def new_database(admin_uri: str, name: str) -> str:
    """Create database ``name``, suffixed with the pytest-xdist worker (``_gw0``...: the workers may each set
    up a module's fixture at once), dropped first if a previous session left it; return its URI."""
    import psycopg

    name = f"{name}_{os.environ.get('PYTEST_XDIST_WORKER', 'main')}"
    with psycopg.connect(admin_uri, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}"')
        connection.execute(f'CREATE DATABASE "{name}"')
    return admin_uri.rsplit("/", 1)[0] + "/" + name


@contextmanager
def mlflow_server(folder: Path, backend_store_uri: str, *extra: str, env: dict[str, str] | None = None,
                  workers: int = 1, port: int | None = None) -> Iterator[str]:
    """``python -m dlexp.server`` on ``port`` (default: a free loopback port); yields its URL; always stopped
    at the end."""
    port = port or free_port()
    log = folder / f"server-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "dlexp.server", "--port", str(port), "--backend-store-uri", backend_store_uri,
         "--artifacts-destination", str(folder / "artifacts"), "--workers", str(workers), *extra],
        cwd=ROOT, env={**dlexp_env(), **(env or {})}, stdout=subprocess.DEVNULL, stderr=log.open("w"),
        start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).read()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the MLflow server did not start: {log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield url
    finally:
        if process.poll() is None:  # not when a test killed it
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
