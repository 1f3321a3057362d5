"""What a user looks at after a search: Optuna's pictures, the best trial and the command that reruns it.

Everything goes into the sweep folder (``optimization_results.yaml``, ``search_trials.csv``,
``search/*.png``) and onto the sweep's MLflow run (artifacts, and the tags ``dlexp.best_params`` and
``dlexp.best_command``). The trials table holds every trial of the study, also those of earlier runs of
the same command, which the jobs table (this sweep folder's jobs only) does not.
"""

from __future__ import annotations

import json
import logging
import shlex
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from dlexp.sweeps.search.space import SearchSpace
from dlexp.sweeps.search.study import INTERRUPTED_ATTR, hide_password

log = logging.getLogger(__name__)

RESULTS_FILE = "optimization_results.yaml"
TRIALS_FILE = "search_trials.csv"


def best_command(space: SearchSpace, params: dict, config: DictConfig | None = None) -> str:
    """The one command that trains the best trial's configuration again, as a single run (with the
    ``--config-dir`` of the search, so a project's own configs are found again)."""
    sources = OmegaConf.select(config, "hydra.runtime.config_sources", default=None) if config is not None else None
    dirs = [str(source.path) for source in sources or [] if source.provider == "command-line"]
    config_dirs = [part for path in dirs for part in ("--config-dir", shown_path(path))]
    return shlex.join(["python", "-m", "dlexp", *config_dirs, *space.overrides(params)])


def shown_path(path: str) -> str:
    """``path`` relative to the current folder when it is inside it, else as it is."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


def report_search(study, storage_url: str, space: SearchSpace, sweep_dir: Path, config: DictConfig) -> None:
    """Write the results file, the trials table and the pictures; log them on the sweep's run."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {state.name: sum(t.state == state and INTERRUPTED_ATTR not in t.user_attrs for t in trials)
              for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    counts["INTERRUPTED"] = sum(INTERRUPTED_ATTR in t.user_attrs for t in trials)
    results = {"study": study.study_name, "storage": hide_password(storage_url),
               "direction": study.direction.name.lower(), "metric": str(config.tracking.best_metric),
               "trials": counts}
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        results.update(best_trial=best.number, best_value=best.value, best_params=dict(best.params),
                       best_run_id=best.user_attrs.get("dlexp.run_id"),
                       best_command=best_command(space, best.params, config))
        log.info("best trial %d: %s = %.4f; rerun it with:\n%s", best.number, config.tracking.best_metric,
                 best.value, results["best_command"])
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / RESULTS_FILE).write_text(OmegaConf.to_yaml(OmegaConf.create(results)))
    table = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))
    table.to_csv(sweep_dir / TRIALS_FILE, index=False)
    pictures = draw_pictures(study, sweep_dir / "search", list(space.distributions))
    log_on_sweep_run(sweep_dir, config, results, pictures)


def draw_pictures(study, folder: Path, keys: list[str]) -> list[Path]:
    """Optimisation history, parameter importances, the slice plot, the contour of the two most important
    parameters and the trials' intermediate scores, each where the study has enough trials for it."""
    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)  # categorical axes of numbers-as-text
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as plots
    from optuna.importance import get_param_importances
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not complete:
        return []
    varied = [k for k in keys if len({repr(t.params.get(k)) for t in complete}) > 1]
    importances: dict[str, float] = {}
    if len(complete) >= 2 and varied:
        try:
            importances = get_param_importances(study, params=varied)
        except (RuntimeError, ValueError) as error:
            log.info("no parameter importances: %s", error)
    top = list(importances)[:2] if importances else varied[:2]
    drawings = {"optimization_history": lambda: plots.plot_optimization_history(study)}
    if importances:
        drawings["param_importances"] = lambda: plots.plot_param_importances(study, params=varied)
    if varied:
        drawings["slice"] = lambda: plots.plot_slice(study, params=varied)
    if len(top) == 2:
        drawings["contour"] = lambda: plots.plot_contour(study, params=top)
    if any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        drawings["intermediate_values"] = lambda: plots.plot_intermediate_values(study)
    folder.mkdir(parents=True, exist_ok=True)
    pictures = []
    for name, draw in drawings.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            try:
                axes = draw()
            except (ValueError, RuntimeError) as error:
                log.info("no %s picture: %s", name, error)
                continue
        figure = (axes.flat[0] if hasattr(axes, "flat") else axes).figure
        figure.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
        plt.close(figure)
        pictures.append(folder / f"{name}.png")
    return pictures


def log_on_sweep_run(sweep_dir: Path, config: DictConfig, results: dict, pictures: list[Path]) -> None:
    """Attach the results to the sweep's run (SweepRun opened it; it ends it after the sweeper returns)."""
    from mlflow.tracking import MlflowClient

    from dlexp.sweeps.sweep import SWEEP_FILE

    if not (sweep_dir / SWEEP_FILE).exists():
        return
    run_id = json.loads((sweep_dir / SWEEP_FILE).read_text())["run_id"]
    from dlexp.config.paths import absolute_uri

    client = MlflowClient(tracking_uri=absolute_uri(str(config.tracking.uri), Path(str(config.hydra.runtime.cwd))))
    for picture in pictures:
        client.log_artifact(run_id, str(picture), "search")
    for name in (RESULTS_FILE, TRIALS_FILE):
        client.log_artifact(run_id, str(sweep_dir / name))
    client.set_tag(run_id, "dlexp.study", f"{results['study']} in {results['storage']}")
    if "best_params" in results:
        client.set_tag(run_id, "dlexp.best_params", json.dumps(results["best_params"]))
        client.set_tag(run_id, "dlexp.best_command", results["best_command"])
        client.set_tag(run_id, "dlexp.best_trial", str(results["best_trial"]))
