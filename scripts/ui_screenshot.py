"""Look at MLflow's UI for a store without opening a browser: a PNG (or the rendered page's HTML) of a page.

    python scripts/ui_screenshot.py                                  # the project's store, experiment spiral
    python scripts/ui_screenshot.py --store sqlite:////tmp/x/mlflow.db --experiment mine --out runs.png
    python scripts/ui_screenshot.py --run RUN_ID --out run.png       # one run's page
    python scripts/ui_screenshot.py --flat --dom page.html           # every run unnested; the HTML it renders

It starts ``python -m dlexp.server`` over the store on a free port, renders the page in headless Chromium
(Debian: ``apt-get install chromium``), and stops the server. The runs table is MLflow's "Model training"
view (``workflowType=machine_learning``), as the links dlexp prints open it. ``--flat`` sorts by run name,
which makes MLflow list sweeps, jobs and folds unnested, so every name is on the page at once.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def find_chromium() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def mlflow_server(store: str | None, artifacts: str | None, timeout: float = 90.0):
    """``python -m dlexp.server`` over ``store`` on a free port; yields its base URL, stops it after."""
    port = free_port()
    command = [sys.executable, "-m", "dlexp.server", "--port", str(port)]
    if store:
        command += ["--backend-store-uri", store]
    if artifacts:
        command += ["--artifacts-destination", artifacts]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    log = tempfile.TemporaryFile()
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"the MLflow server did not start:\n{log.read().decode()[-2000:]}") from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, 15)  # its own session: the server and its workers, nothing else
        server.wait(timeout=30)
        log.close()


def page_url(base: str, experiment_id: str, run_id: str | None = None, flat: bool = False,
             tab: str | None = None) -> str:
    if run_id:
        page = f"runs/{run_id}/{tab}" if tab else f"runs/{run_id}"
        return f"{base}/#/experiments/{experiment_id}/{page}?workflowType=machine_learning"
    query = "workflowType=machine_learning" + ("&orderByKey=attributes.run_name&orderByAsc=true" if flat else "")
    return f"{base}/#/experiments/{experiment_id}/runs?{query}"


def render(url: str, screenshot: Path | None = None, size: str = "1600,1000", budget_ms: int = 15000) -> str:
    """Render ``url`` in headless Chromium; writes ``screenshot`` if given, returns the rendered HTML.

    ``--virtual-time-budget`` lets MLflow's JavaScript app fetch and draw before the capture.
    """
    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError("no Chromium found (Debian: apt-get install chromium)")
    outputs = [f"--screenshot={screenshot}"] if screenshot else []
    html = ""
    for output in [*outputs, "--dump-dom"]:
        with tempfile.TemporaryDirectory() as profile:
            result = subprocess.run(
                [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", output, f"--window-size={size}",
                 f"--virtual-time-budget={budget_ms}", url],
                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"chromium failed ({result.returncode}): {result.stderr[-1000:]}")
        html = result.stdout if output == "--dump-dom" else html
    return html


def experiment_id_of(store: str | None, name: str) -> str:
    from mlflow.tracking import MlflowClient

    if store is None:
        from dlexp.server import project_store

        store = project_store()[0]
    experiment = MlflowClient(store).get_experiment_by_name(name)
    if experiment is None:
        raise SystemExit(f"error: no experiment {name!r} in {store}")
    return experiment.experiment_id


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="backend store URI (default: the project's, conf/tracking/mlflow.yaml)")
    parser.add_argument("--artifacts", help="artifact folder the server serves (default: the project's)")
    parser.add_argument("--experiment", default="spiral", help="experiment name (default: spiral)")
    parser.add_argument("--run", help="a run id: its page instead of the runs table")
    parser.add_argument("--tab", help="with --run: a tab of its page and a path in it, e.g. artifacts/sweep_jobs.json")
    parser.add_argument("--flat", action="store_true", help="list every run unnested (sorted by name)")
    parser.add_argument("--page", help="another page of the UI by its path after '#/', {experiment} for the "
                        "experiment's id: experiments/{experiment}/models (its Models tab), models (the registry)")
    parser.add_argument("--out", type=Path, help="PNG to write (default: mlflow_ui.png, unless --dom alone)")
    parser.add_argument("--dom", type=Path, help="write the rendered page's HTML here")
    parser.add_argument("--size", default="1600,1000", help="window size WIDTH,HEIGHT")
    args = parser.parse_args(argv)
    if args.out is None and args.dom is None:
        args.out = Path("mlflow_ui.png")
    if find_chromium() is None:
        raise SystemExit("error: no Chromium found; on Debian/Ubuntu: apt-get install chromium")
    experiment_id = experiment_id_of(args.store, args.experiment)
    artifacts = args.artifacts or (str(Path(tempfile.gettempdir()) / "dlexp-ui-artifacts") if args.store else None)
    with mlflow_server(args.store, artifacts) as base:
        url = (f"{base}/#/{args.page.format(experiment=experiment_id)}?workflowType=machine_learning" if args.page
               else page_url(base, experiment_id, args.run, args.flat, args.tab))
        html = render(url, args.out.resolve() if args.out else None, args.size)
    if args.dom:
        args.dom.write_text(html)
    print(f"{args.out or args.dom}: {url.replace(base, 'http://SERVER')}")


if __name__ == "__main__":
    main()
