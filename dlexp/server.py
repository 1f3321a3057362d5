"""``dlexp server`` (or ``python -m dlexp.server``): an MLflow tracking server over the project's store, on 127.0.0.1.

The store and artifact folder come from the same config the runs use (conf/tracking/mlflow.yaml), so the
server shows exactly what ``python -m dlexp`` logged. Runs elsewhere (other processes, cluster jobs) log
to it with ``tracking.uri=http://HOST:PORT``; it serves their artifacts too (``--serve-artifacts``).
The store may be the project's SQLite file (the default) or a database server such as PostgreSQL
(``--backend-store-uri postgresql://USER:PASSWORD@HOST:PORT/DB``), which a team's server should use.
Only ``--host`` makes it listen beyond this machine; ``--auth`` makes it require logins (MLflow's basic-auth
app), with the first (admin) account taken from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, the
same variables the runs use to log in.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
from pathlib import Path

from dlexp.locations import CONF_DIR, PROJECT_ROOT

LOOPBACK = "127.0.0.1"


def project_store() -> tuple[str, str]:
    """The backend store URI and artifact folder that conf/tracking/mlflow.yaml points runs at."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        tracking = compose(config_name="config").tracking
    return str(tracking.uri), str(Path(tracking.artifact_location).resolve())


def server_command(port: int, host: str = LOOPBACK, backend_store_uri: str | None = None,
                   artifacts_destination: str | None = None, workers: int = 1, auth: bool = False) -> list[str]:
    """The ``mlflow server`` command line (defaults: the project's store and artifacts); ``auth``: logins."""
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
    if auth:
        command += ["--app-name", "basic-auth"]
    return command


AUTH_CACHE_SECONDS = 60
AUTH_ENVIRONMENT = {"MLFLOW_AUTH_ADMIN_USERNAME": "MLFLOW_TRACKING_USERNAME",
                    "MLFLOW_AUTH_ADMIN_PASSWORD": "MLFLOW_TRACKING_PASSWORD"}


def auth_environment(auth_db_uri: str, default_permission: str, environ: dict[str, str]) -> dict[str, str]:
    """What MLflow's basic-auth app reads at start: its config file, the admin account, a session key.

    The admin account is created on the first start over an empty user database (later starts keep it);
    it comes from MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD unless MLflow's own
    MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD are set. Raises SystemExit with one line if
    neither is set.
    """
    env = {}
    for admin, client in AUTH_ENVIRONMENT.items():
        value = environ.get(admin) or environ.get(client)
        if not value:
            raise SystemExit(f"error: --auth needs the admin account: set {client} (or {admin})")
        env[admin] = value
    config = tempfile.NamedTemporaryFile("w", prefix="dlexp-auth-", suffix=".ini", delete=False)  # noqa: SIM115
    with config:  # read by the server's workers at their start; no secret in it
        config.write(f"[mlflow]\ndefault_permission = {default_permission}\ndatabase_uri = {auth_db_uri}\n"
                     "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                     # A password is checked against its slow hash once a minute per worker, not on every
                     # request (8 jobs logging at once stalled the server); a changed password or a deleted
                     # user may still get in for up to that minute.
                     f"auth_cache_ttl_seconds = {AUTH_CACHE_SECONDS}\n")
    env["MLFLOW_AUTH_CONFIG_PATH"] = config.name
    # Signs the UI's login sessions (CSRF); one per server start unless the operator fixes one.
    env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(32)
    return env


def main(argv: list[str] | None = None, prog: str = "python -m dlexp.server") -> None:
    """Parse ``argv`` (default: the command line) and replace this process with the MLflow server."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=5000)
    parser.add_argument("--host", default=LOOPBACK,
                        help="interface to listen on; anything but 127.0.0.1 exposes the (unauthenticated) "
                             "server to the network, e.g. 0.0.0.0 for cluster jobs")
    parser.add_argument("--backend-store-uri", help="default: tracking.uri of conf/tracking/mlflow.yaml")
    parser.add_argument("--artifacts-destination",
                        help="default: tracking.artifact_location of conf/tracking/mlflow.yaml")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--auth", action="store_true",
                        help="require logins (MLflow's basic-auth app); the admin account comes from "
                             "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD")
    parser.add_argument("--auth-db-uri", default=f"sqlite:///{PROJECT_ROOT / 'mlflow_auth.db'}",
                        help="where --auth keeps the accounts and permissions (default: %(default)s)")
    parser.add_argument("--default-permission", default="EDIT", choices=["READ", "EDIT", "MANAGE", "NO_PERMISSIONS"],
                        help="what a logged-in user may do with others' experiments (default: %(default)s)")
    args = parser.parse_args(argv)
    command = server_command(args.port, args.host, args.backend_store_uri, args.artifacts_destination,
                             args.workers, auth=args.auth)
    if args.auth:
        os.environ.update(auth_environment(args.auth_db_uri, args.default_permission, dict(os.environ)))
    if args.host != LOOPBACK:
        who = "anyone with an account" if args.auth else "anyone who can reach port " + str(args.port)
        print(f"warning: the server listens on {args.host}: {who} can read and write every run; "
              "plain HTTP: passwords and runs cross the network unencrypted", file=sys.stderr)
    print(f"MLflow at http://{args.host}:{args.port}", file=sys.stderr)
    # MLflow's server-side job runner (GenAI evaluation jobs, a pool of huey worker processes) is of no
    # use to dlexp's runs; without it the server starts and stops in a fraction of the time.
    os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    os.execv(sys.executable, command)  # the server replaces this process: Ctrl-C stops it directly


def cli(prog: str = "python -m dlexp.server") -> None:
    """``dlexp server ...`` (see dlexp.__main__.SUBCOMMANDS) and ``python -m dlexp.server ...``."""
    main(prog=prog)


if __name__ == "__main__":
    cli()
