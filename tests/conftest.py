"""Shared test helpers: composing the real Hydra configs and a throwaway MLflow store per test."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = PROJECT_ROOT / "conf"
SEED_DATA = PROJECT_ROOT.parent / "shared" / "seed-data"

#: Overrides that make a spiral run take a second or two: for tests of plumbing, not of accuracy.
QUICK = ["trainer.max_epochs=4", "trainer.folds=2", "plots.grid_resolution=20"]


def compose_config(overrides: list[str]):
    """The config ``python -m dlexp OVERRIDES`` would run, composed through Hydra."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.fixture
def store(tmp_path) -> dict:
    """A fresh SQLite MLflow store: ``overrides`` to log into it, ``client`` to read it back."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    overrides = [f"tracking.uri={uri}", f"tracking.artifact_location={tmp_path / 'artifacts'}"]
    return {"uri": uri, "overrides": overrides, "client": MlflowClient(tracking_uri=uri), "dir": tmp_path}


@pytest.fixture
def seed_data() -> Path:
    if not (SEED_DATA / "trainData.txt").is_file():
        pytest.skip(f"course data not found at {SEED_DATA}")
    return SEED_DATA


@pytest.fixture(scope="session")
def postgres_admin_uri():
    """A PostgreSQL to create test databases in (tests/service_support.py: CI's, or a private one)."""
    from service_support import postgres_server

    with postgres_server() as uri:
        yield uri


#: Processes for the whole suite (pytest-xdist): the fast tier is many small independent tests.
WHOLE_SUITE_WORKERS = 2


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """``python -m pytest`` without paths (the README's command, .ci/run) runs on WHOLE_SUITE_WORKERS
    processes; a run of chosen files or tests stays in one process (no workers to start), and ``-n N`` on the
    command line always wins. Runs before pytest-xdist's own hook, which turns ``numprocesses`` into workers."""
    if (config.args_source == pytest.Config.ArgsSource.TESTPATHS and config.pluginmanager.hasplugin("xdist")
            and not hasattr(config, "workerinput") and config.getoption("numprocesses", None) is None
            and not config.getoption("collectonly") and not config.getoption("usepdb")):
        config.option.numprocesses = WHOLE_SUITE_WORKERS


#: The pytest-xdist group (``--dist loadgroup``, as .ci/run runs the full tier) of every test that needs the
#: SLURM cluster: there is one cluster, a one-node one with 2 CPUs, and those tests time its jobs and cancel
#: them, so they run one after another on one worker while the other worker takes the other tests.
CLUSTER_GROUP = "slurm-cluster"


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("cluster") is not None:
            item.add_marker(pytest.mark.xdist_group(CLUSTER_GROUP))


@pytest.fixture(autouse=True)
def default_signal_handlers():
    """Every test starts with Python's own SIGINT and SIGTERM handlers and no requeue signal taken: a test that
    leaves a training's handlers behind (a suspended run's generator) must not change how the next one stops."""
    import signal

    from dlexp import interrupts

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for signum in list(interrupts._requeue_signals):
            signal.signal(signum, signal.SIG_DFL)
        interrupts._requeue_signals.clear()
    yield


@pytest.fixture
def one_torch_thread():
    """As dlexp runs (trainer.num_threads: 1): two threads on tiny tensors are slower, badly so under load."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: Under this variable (set by .ci/run, which starts the services) a skipped test that needs them fails.
REQUIRE_SERVICES = "DLEXP_REQUIRE_SERVICES"
SERVICE_MARKERS = ("cluster", "postgres", "browser")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and os.environ.get(REQUIRE_SERVICES) == "1"
            and any(item.get_closest_marker(name) for name in SERVICE_MARKERS)):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"{REQUIRE_SERVICES}=1 but this test was skipped: {reason}"


#: Where each test's CPU seconds (its own process and the child processes it waited for) and wall seconds are
#: appended, one tab-separated line per test, when set: what the tiers' time is spent on (.ci/run's budget).
CPU_LOG = "DLEXP_TEST_CPU_LOG"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    path = os.environ.get(CPU_LOG)
    if not path:
        yield
        return
    import time

    before, started = os.times(), time.monotonic()
    yield
    after = os.times()
    cpu = sum(getattr(after, key) - getattr(before, key)
              for key in ("user", "system", "children_user", "children_system"))
    with open(path, "a") as log:
        log.write(f"{cpu:.1f}\t{time.monotonic() - started:.1f}\t{item.nodeid}\n")
