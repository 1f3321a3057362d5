"""The service scripts (scripts/) work from a checkout in a folder other users cannot enter, and a start that
fails says why in its last line. Run on scripts/postgres.sh (a private server on a free port, so a running CI
database is not touched); scripts/slurm_cluster.sh shares its state folders (scripts/service_state.sh) but is
one cluster per machine, so it is checked by .ci/run itself, run from a private clone."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from service_support import free_port, postgres_bin_dir
from sweep_support import ROOT

pytestmark = pytest.mark.postgres


@pytest.fixture
def private_checkout():
    """The scripts in a folder of mode 0700 (as ``mktemp -d`` makes), as a clone there would hold them; yields
    the checkout and an environment for its scripts (a free port, no DLEXP_SERVICES_DIR)."""
    if postgres_bin_dir() is None:
        pytest.skip("no PostgreSQL here (initdb / pg_ctl not found); scripts/postgres.sh start installs it")
    private = Path(tempfile.mkdtemp(prefix="dlexp-private-"))
    assert private.stat().st_mode & 0o777 == 0o700
    checkout = private / "clone"
    shutil.copytree(ROOT / "scripts", checkout / "scripts")
    env = {key: value for key, value in os.environ.items() if key not in ("DLEXP_SERVICES_DIR", "DLEXP_POSTGRES_URI")}
    env["DLEXP_POSTGRES_PORT"] = str(free_port())
    yield checkout, env
    script(checkout, env, "stop")
    state = Path(script(checkout, env, "dir").stdout.strip())
    # the checkout's own state folder (scripts/service_state.sh), nothing else
    if state.is_absolute() and state.name == "postgres" and checkout.name in state.parent.name:
        shutil.rmtree(state.parent, ignore_errors=True)
    shutil.rmtree(private)


def script(checkout: Path, env: dict[str, str], command: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(checkout / "scripts" / "postgres.sh"), command], cwd=checkout, env=env,
                          capture_output=True, text=True, timeout=120)


def test_postgres_starts_from_a_private_checkout(private_checkout):
    import psycopg

    checkout, env = private_checkout
    started = script(checkout, env, "start")
    assert started.returncode == 0, started.stderr
    uri = started.stdout.strip().splitlines()[-1]
    assert uri.startswith("postgresql://dlexp:") and f"127.0.0.1:{env['DLEXP_POSTGRES_PORT']}/dlexp" in uri
    with psycopg.connect(uri) as connection:
        assert connection.execute("SELECT current_user, current_database()").fetchone() == ("dlexp", "dlexp")
    state = Path(script(checkout, env, "dir").stdout.strip())
    assert (state / "data" / "PG_VERSION").is_file()
    if os.geteuid() == 0:  # as root the server runs as `postgres`, who cannot enter the private folder
        assert checkout.parent not in state.parents
    stopped = script(checkout, env, "stop")
    assert stopped.returncode == 0 and stopped.stderr.strip() == "postgres: stopped"
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(uri, connect_timeout=5)


def test_a_failing_start_says_why_last(private_checkout):
    checkout, env = private_checkout
    with socket.socket() as taken:  # the port the server wants is in use
        taken.bind(("127.0.0.1", int(env["DLEXP_POSTGRES_PORT"])))
        taken.listen()
        started = script(checkout, env, "start")
    assert started.returncode == 1
    last = started.stderr.strip().splitlines()[-1]
    assert last.startswith("postgres: error: PostgreSQL did not start:") and "Address already in use" in last, last


@pytest.mark.skipif(os.geteuid() != 0, reason="as another user the server runs as that user, who can enter it")
def test_a_services_dir_the_server_cannot_enter_is_named(private_checkout):
    checkout, env = private_checkout
    closed = checkout.parent  # mode 0700, owned by root
    started = script(checkout, {**env, "DLEXP_SERVICES_DIR": str(checkout / "services")}, "start")
    assert started.returncode == 1
    assert started.stderr.strip().splitlines()[-1] == (
        f"postgres: error: PostgreSQL runs as user postgres, who cannot enter {closed} (mode 700, owner root); "
        "set DLEXP_SERVICES_DIR to a folder postgres can enter, or leave it unset")
