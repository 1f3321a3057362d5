"""dlexp from Python: run an experiment or a sweep from overrides, and read back runs as pandas tables.

The same overrides as the ``python -m dlexp`` command, as a list (or one string split like a shell)::

    import dlexp
    result = dlexp.run(["+experiment=spiral", "trainer.folds=3"])
    result.summary["test_acc"], result.folds, result.model, result.show("decision_boundary_test")
    sweep = dlexp.sweep(["+experiment=spiral", "optimizer.lr=0.003,0.01"])
    sweep.jobs                                   # one row per job, as sweep_jobs.csv
    runs = dlexp.load_runs("spiral")             # every run of the experiment, nesting as columns

A run trains in this process (its progress bars render in Jupyter, its INFO lines are shown); a sweep runs
as the ``dlexp`` command in a child process (dlexp.sweeps.command says why). Mistakes in the overrides or
the data raise :class:`dlexp.errors.DlexpError` with the same one-line message the command prints.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf, open_dict

import dlexp
from dlexp.errors import DlexpError
from dlexp.reports.display import visible_logs

if TYPE_CHECKING:
    import pandas as pd
    import torch
    import torchinfo

    from dlexp.data.protocol import ExperimentData

log = logging.getLogger(__name__)

#: dlexp's own configs (the checkout's conf/ or the installed package's); ``config_dirs`` are searched after it.
CONF_DIR = dlexp.CONF_DIR

Overrides = Sequence[str] | str


def _as_list(overrides: Overrides) -> list[str]:
    """A list of overrides as given, or one string split the way a shell would."""
    if isinstance(overrides, str):
        return shlex.split(overrides)
    if not all(isinstance(item, str) for item in overrides):
        raise DlexpError(f"overrides={list(overrides)!r}: expected strings such as 'trainer.folds=3'")
    return list(overrides)


def _searchpath(config_dirs: Sequence[str | Path]) -> list[str]:
    """``hydra.searchpath`` overrides that add ``config_dirs`` (checked to exist) to where configs are found."""
    if not config_dirs:
        return []
    folders = [Path(folder).resolve() for folder in config_dirs]
    if missing := [str(folder) for folder in folders if not folder.is_dir()]:
        raise DlexpError(f"config_dirs: no such folder {', '.join(missing)}")
    return ["hydra.searchpath=[" + ",".join(f"file://{folder}" for folder in folders) + "]"]


def compose(overrides: Overrides = (), config_dirs: Sequence[str | Path] = (),
            return_hydra_config: bool = False) -> DictConfig:
    """The config ``python -m dlexp OVERRIDES`` would run, composed with Hydra's compose API.

    ``config_dirs``: more folders of config groups (e.g. your own ``experiment/NAME.yaml``), searched after
    dlexp's conf/. ``return_hydra_config`` keeps the ``hydra`` node (run folder, sweep folder). Raises
    DlexpError for an unknown group option or key, a bad value or sweep syntax (``a=1,2``: use
    :func:`sweep`), with Hydra's message on one line.
    """
    overrides = _as_list(overrides)
    return _compose_all([overrides + _searchpath(config_dirs)], return_hydra_config)[0]


def _compose_all(jobs: list[list[str]], return_hydra_config: bool = False) -> list[DictConfig]:
    """The config of each list of overrides in ``jobs``, composed in one Hydra context (see :func:`compose`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    configs = []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        for overrides in jobs:
            try:
                configs.append(hydra_compose(config_name="config", overrides=overrides,
                                             return_hydra_config=return_hydra_config))
            except (HydraException, OmegaConfBaseException) as error:
                text = str(error).split("\nConfig search path:")[0]  # the search path's providers say nothing new
                message = " ".join(line.strip() for line in text.splitlines() if line.strip())
                if "--multirun" in message:
                    message += " (in Python: dlexp.sweep runs a sweep)"
                shown = " ".join(o for o in overrides if not o.startswith("hydra.searchpath="))
                raise DlexpError(f"overrides {shown}: {message}") from error
    return configs


def _task_overrides(overrides: list[str]) -> list[str]:
    """The overrides without Hydra's own (``hydra.*``, ``hydra/...``), as Hydra's ``overrides.task``."""
    return [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]


@dataclass
class RunResult:
    """One finished run, as :func:`run` returns it.

    Attributes:
        run_id: the job's MLflow run (its folds are nested runs under it).
        tracking_uri, experiment_name: where that run is.
        summary: the headline numbers (accuracies as fractions in [0, 1], ``train_seconds`` in seconds,
            ``best_fold`` the reported model's fold, ``fold_test_acc`` fold -> test accuracy); the same
            numbers the run logged as metrics and wrote to ``summary.json``.
        folds: one row per fold, indexed by ``fold`` (1..k): ``run_id`` (the fold's MLflow run),
            ``epochs_run``, ``best_epoch``, ``best_val_loss``, ``best_val_acc``, ``test_acc``, ``n_train``,
            ``n_val``.
        epochs: one row per fold and epoch: ``fold``, ``epoch`` (from 1), ``train_loss``, ``val_loss``,
            ``val_acc``, ``lr`` (the learning rate the epoch trained with).
        models: each fold's model with its best epoch's weights, in eval mode (``models[k - 1]`` is fold k).
        model: the reported model (the fold with the lowest validation loss), one of ``models``.
        data: the dataset as trained on (``x_test``: points ``N x 2`` float32 or images ``N x 3 x H x W``
            uint8; ``y_test`` class indices; ``class_names``); images go through ``data.eval_transform``
            before a model.
        output_dir: the run folder (config_resolved.yaml, model.pt, summary.txt/json, plots/, folds/).
        pictures: every PNG of the run folder by name, its path relative to the folder without ``.png``
            (``plots/decision_boundary_test``, ``folds/fold_1/loss_curve``).
        config: the composed config the run used.
    """

    run_id: str
    tracking_uri: str
    experiment_name: str
    summary: dict
    folds: pd.DataFrame
    epochs: pd.DataFrame
    models: list[torch.nn.Module]
    model: torch.nn.Module
    data: ExperimentData
    output_dir: Path
    pictures: dict[str, Path]
    config: DictConfig = field(repr=False)

    def picture(self, name: str) -> Path:
        """The path of picture ``name``: a key of :attr:`pictures`, or a run picture's short name
        (``decision_boundary_test`` for ``plots/decision_boundary_test``). Raises DlexpError naming the
        pictures there are when there is none of that name."""
        for key in (name, f"plots/{name}"):
            if key in self.pictures:
                return self.pictures[key]
        raise DlexpError(f"no picture {name!r} in {self.output_dir}; it has {', '.join(self.pictures)}")

    def show(self, *names: str, width: int | None = None) -> None:
        """Display pictures inline in Jupyter (elsewhere print their paths): the named ones (see
        :meth:`picture`), or without names the run's own (``plots/*``). ``width`` in pixels. Raises
        DlexpError for a name the run has no picture of."""
        from dlexp.reports.display import show_pictures

        paths = [self.picture(name) for name in names] or [
            path for key, path in self.pictures.items() if key.startswith("plots/")]
        show_pictures(paths, width)


def run(overrides: Overrides = (), *, output_dir: str | Path | None = None,
        config_dirs: Sequence[str | Path] = (), log_level: int | str | None = "INFO") -> RunResult:
    """Train one experiment as ``python -m dlexp OVERRIDES`` would, in this process; return its results.

    ``overrides``: e.g. ``["+experiment=spiral", "trainer.folds=3"]`` or that as one string.
    ``output_dir``: the run folder; by default the config's ``hydra.run.dir`` (``outputs/<date>/<time>``
    under the current folder). ``config_dirs``: extra config folders (see :func:`compose`).
    ``log_level``: the ``dlexp`` logger's lines from this level up are printed (and kept in the run
    folder's ``dlexp.log``) while the run goes; None leaves logging alone. Progress bars follow
    ``trainer.progress`` (in Jupyter, tqdm's notebook bars).

    The run is logged to MLflow as from the command (a job run with nested fold runs). Raises DlexpError
    for a mistake in the overrides, config or data (nothing is trained then), and whatever the run raised
    otherwise (its MLflow run ends FAILED, or KILLED for KeyboardInterrupt).
    """
    from dlexp.experiment import experiment_outcome

    overrides = _as_list(overrides)
    cfg = compose(overrides, config_dirs, return_hydra_config=True)
    run_dir = Path(output_dir if output_dir is not None else cfg.hydra.run.dir).resolve()
    with open_dict(cfg):
        del cfg["hydra"]
    with visible_logs(log_level, run_dir / "dlexp.log"):
        outcome = experiment_outcome(cfg, run_dir, _task_overrides(overrides))
    return _run_result(outcome, cfg, run_dir)


def _run_result(outcome, cfg: DictConfig, run_dir: Path) -> RunResult:
    import pandas as pd
    from mlflow.tracking import MlflowClient

    tracking_uri = str(cfg.tracking.uri)
    client = MlflowClient(tracking_uri)
    fold_runs = {int(run.data.tags["dlexp.fold"]): run.info.run_id for run in client.search_runs(
        [client.get_run(outcome.run_id).info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{outcome.run_id}'")}
    folds = pd.DataFrame([{
        "fold": r.fold, "run_id": fold_runs.get(r.fold), "epochs_run": r.epochs_run, "best_epoch": r.best_epoch,
        "best_val_loss": r.best_val_loss, "best_val_acc": r.best_val_acc, "test_acc": r.test_acc,
        "n_train": len(r.train_indices), "n_val": len(r.val_indices)} for r in outcome.results]).set_index("fold")
    epochs = pd.DataFrame([{"fold": r.fold, "epoch": epoch, **{key: values[epoch - 1]
                                                                for key, values in r.history.items()}}
                           for r in outcome.results for epoch in range(1, r.epochs_run + 1)])
    pictures = {path.relative_to(run_dir).with_suffix("").as_posix(): path
                for path in sorted(run_dir.rglob("*.png"))}
    for model in outcome.models:
        model.eval()
    return RunResult(outcome.run_id, tracking_uri, str(cfg.tracking.experiment_name), outcome.summary, folds,
                     epochs, outcome.models, outcome.best_model, outcome.data, run_dir, pictures, cfg)


@dataclass
class SweepResult:
    """One finished sweep, as :func:`sweep` returns it.

    Attributes:
        run_id: the sweep's MLflow run (each job's run is nested under it); None if it never opened one.
        sweep_dir: the sweep folder (one subfolder per job, ``sweep_jobs.csv``).
        jobs: the jobs table, as ``sweep_jobs.csv``: ``job`` (number from 0), one column per swept key
            (short name), ``status`` (FINISHED, FAILED, KILLED, PRUNED), ``reused`` (an earlier run of the
            same config), ``name``, ``overrides``, ``run_id``, ``error``, then the job run's metrics
            (accuracies as fractions, ``train_seconds`` in seconds).
        tracking_uri, experiment_name: where the runs are (None if no job started).
        returncode: the ``dlexp`` command's exit status (0, or 2 when a job failed).
        output: the lines the command printed.
    """

    run_id: str | None
    sweep_dir: Path
    jobs: pd.DataFrame
    tracking_uri: str | None
    experiment_name: str | None
    returncode: int
    output: list[str] = field(repr=False)

    def runs(self) -> pd.DataFrame:
        """This sweep's runs in MLflow (the sweep, its jobs and their folds) as :func:`load_runs` gives them."""
        if self.run_id is None or self.tracking_uri is None:
            raise DlexpError(f"{self.sweep_dir}: the sweep has no MLflow run")
        frame = load_runs(self.experiment_name, self.tracking_uri)
        return frame[frame["sweep_run_id"] == self.run_id].reset_index(drop=True)


def sweep(overrides: Overrides = (), *, sweep_dir: str | Path | None = None,
          config_dirs: Sequence[str | Path] = (), echo: bool = True) -> SweepResult:
    """Run a sweep as ``python -m dlexp -m OVERRIDES`` (in a child process) and return its jobs table.

    ``overrides`` as for the command, with sweeps such as ``optimizer.lr=0.003,0.01`` or
    ``hydra/launcher=parallel``. ``sweep_dir``: the sweep folder (also taken from a ``hydra.sweep.dir=``
    override); by default ``outputs/multirun/<date>/<time>`` under the current folder. ``echo``: print the
    command's output as it comes (job lines, progress every 10 s, the closing summary).

    A sweep whose jobs partly failed is returned (see ``jobs.status`` and ``jobs.error``), with a warning.
    Raises DlexpError when the sweep could not run (a mistake in the overrides: the command's ``error:``
    lines), RuntimeError when the command crashed, KeyboardInterrupt when interrupted (the child is stopped
    with Ctrl-C's signal and ends its runs KILLED).
    """
    import pandas as pd

    from dlexp.sweeps.command import JOBS_CSV, check_finished, default_sweep_dir, run_sweep_process, sweep_run_id
    from dlexp.sweeps.sweep import job_folders

    overrides = _as_list(overrides)
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("hydra.sweep.dir=")]
    folder = Path(sweep_dir if sweep_dir is not None else given[-1] if given else default_sweep_dir()).resolve()
    overrides = [o for o in overrides if not o.startswith("hydra.sweep.dir=")] + _searchpath(config_dirs)
    check_jobs(overrides)
    process = run_sweep_process(overrides, folder, echo=echo)
    check_finished(process)
    jobs = pd.read_csv(folder / JOBS_CSV) if (folder / JOBS_CSV).stat().st_size > 1 else pd.DataFrame()
    tracking_uri = experiment_name = None
    if configs := [path / ".hydra" / "config.yaml" for path in job_folders(folder)]:
        tracking = OmegaConf.load(configs[0]).tracking
        tracking_uri, experiment_name = str(tracking.uri), str(tracking.experiment_name)
    if "status" in jobs and (failed := jobs[~jobs["status"].isin(["FINISHED", "PRUNED"])]).size:
        log.warning("%d of %d jobs did not finish: %s", len(failed), len(jobs),
                    "; ".join(f"#{row.job} {row.status}" for row in failed.itertuples()))
    return SweepResult(sweep_run_id(folder), folder, jobs, tracking_uri, experiment_name, process.returncode,
                       process.lines)


def check_jobs(overrides: list[str]) -> None:
    """Compose every job of a sweep of Hydra's basic sweeper here, before the child starts, so a mistake in
    any job's overrides raises DlexpError (as :func:`compose` words it) before anything runs.

    The command would stop at that job with exit status 1 after the jobs before it ran. Sweeps of another
    sweeper (``hydra/sweeper=search``: its values come from its search space) are checked by the command.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # as dlexp.sweeps.sweep.count_jobs
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if any(o.lstrip("+~").startswith(("hydra/sweeper", "hydra.sweeper")) for o in overrides):
        return
    try:
        jobs = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)[0]
    except HydraException as error:
        raise DlexpError(f"overrides {' '.join(overrides)}: {' '.join(str(error).split())}") from error
    _compose_all([[str(o) for o in job] for job in jobs])


def load_runs(experiment_name: str | None = None, tracking_uri: str | None = None, filter_string: str = "",
              *, overrides: Overrides = ()) -> pd.DataFrame:
    """Every run of an experiment in an MLflow store, one row per run, for analysis with pandas.

    ``experiment_name`` and ``tracking_uri`` default to the config's ``tracking.experiment_name`` and
    ``tracking.uri`` (with ``overrides``, e.g. ``["+experiment=spiral"]``); any store works (a
    ``sqlite:///`` file, a server's ``http://`` URI). ``filter_string``: MLflow's search syntax
    (``"metrics.test_acc > 0.9"``).

    Columns: ``run_id``, ``run_name``, ``kind`` (sweep, job or fold), ``status``, ``sweep_run_id``,
    ``job`` (a sweep job's number), ``job_run_id``, ``fold`` (1..k), then MLflow's own (``start_time``,
    ``end_time``, ``params.*`` as strings, ``metrics.*`` as floats, ``tags.*``); see
    dlexp.tracking.runs_table. Raises DlexpError when the store or the experiment does not exist.
    """
    from dlexp.tracking.runs_table import search_runs

    if experiment_name is None or tracking_uri is None:
        tracking = compose(overrides).tracking
        experiment_name = experiment_name or str(tracking.experiment_name)
        tracking_uri = tracking_uri or str(tracking.uri)
    return search_runs(tracking_uri, experiment_name, filter_string)


def model_summary(overrides: Overrides = (), input_shape: Sequence[int] | None = None,
                  num_classes: int | None = None) -> torchinfo.ModelStatistics:
    """The configured model's layers, untrained, as ``python -m dlexp.inspect OVERRIDES`` prints them.

    ``input_shape`` (one sample, e.g. ``(2,)`` for points or ``(3, 64, 64)`` for images) and
    ``num_classes`` default to the configured dataset's (which is then loaded). The result's ``str()`` is
    the table; ``total_params`` the parameter count; ``summary_list`` one entry per layer with
    ``output_size`` (a batch of 1 first) and ``num_params``.
    """
    from dlexp.config.build import build
    from dlexp.inspect import input_spec, summarize_model

    cfg = compose(overrides)
    if input_shape is None or num_classes is None:
        data_shape, data_classes = input_spec(cfg)
        input_shape = data_shape if input_shape is None else input_shape
        num_classes = data_classes if num_classes is None else num_classes
    model = build("model", cfg.model, input_shape=tuple(input_shape), num_classes=int(num_classes))
    return summarize_model(model, tuple(input_shape))
