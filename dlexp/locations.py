"""Where dlexp reads its configs and shipped data, and where it writes stores, artifacts and caches.

Two ways to run dlexp:

- **From a checkout** (``pip install -e .``, or a clone on ``sys.path``): the configs are the checkout's
  ``conf/``, the shipped data its ``data/``, and the default MLflow store, artifacts and caches live in the
  checkout (``mlflow.db`` beside ``conf/``), whichever folder dlexp is started from.
- **Installed as a tool** (``pip install .`` or a wheel): setup.py maps ``conf/`` and ``data/`` into the
  package as ``dlexp/conf`` and ``dlexp/data_files``; they are read from there, and everything dlexp writes
  (``mlflow.db``, ``mlartifacts/``, ``.dlexp_cache/``, and Hydra's ``outputs/``) goes to the folder it is
  started from, never into site-packages.

The configs name these folders with OmegaConf resolvers (registered in ``dlexp/__init__.py``):
``${dlexp.root:}`` is :data:`PROJECT_ROOT`, ``${dlexp.data:}`` is :data:`DATA_DIR`.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

#: True when the configs ship inside the package (a wheel install), False in a checkout.
INSTALLED = (PACKAGE_DIR / "conf" / "config.yaml").is_file()

#: The source checkout the code runs from (holds conf/, data/, .git), or None for an installed wheel.
CHECKOUT: Path | None = None if INSTALLED else PACKAGE_DIR.parent

#: Hydra's primary config folder (config.yaml and the config groups).
CONF_DIR = PACKAGE_DIR / "conf" if INSTALLED else PACKAGE_DIR.parent / "conf"

#: The shipped course data (trainData.txt, testData.txt: the spiral).
DATA_DIR = PACKAGE_DIR / "data_files" if INSTALLED else PACKAGE_DIR.parent / "data"

#: Where the default store (mlflow.db), artifacts (mlartifacts/) and caches go: the checkout, or for an
#: installed wheel the folder the process started in (taken once, so a job that changes folder, as
#: ``hydra.job.chdir=true`` does, still writes to the same store).
PROJECT_ROOT = Path.cwd() if INSTALLED else PACKAGE_DIR.parent
