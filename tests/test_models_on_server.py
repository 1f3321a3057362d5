"""Models through the team server (``python -m dlexp.server --auth`` over PostgreSQL): a sweep logs and
registers its best model, and a fresh process that knows only the server's URL and a login loads it."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from sweep_support import ROOT, TINY_WITH_MODELS, dlexp_env
from test_team_server import ALICE, admin_client, run_as, server  # noqa: F401 (server is a fixture)

pytestmark = [pytest.mark.postgres, pytest.mark.full]


def test_a_sweep_on_the_server_registers_a_champion_that_a_fresh_process_loads_by_url(server, tmp_path,  # noqa: F811
                                                                                      monkeypatch):
    result = run_as(ALICE, "-m", *TINY_WITH_MODELS, f"tracking.uri={server}", "tracking.experiment_name=served-models",
                    "tracking.register_as=served-spiral", "optimizer.lr=0.01,0.03",
                    f"hydra.sweep.dir={tmp_path}/sweep")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "as models:/served-spiral@champion" in result.stdout

    client = admin_client(server, monkeypatch)
    champion = client.get_model_version_by_alias("served-spiral", "champion")
    test_acc = client.get_run(champion.run_id).data.metrics["test_acc"]
    script = (
        "import mlflow, numpy as np, pandas as pd\n"
        f"mlflow.set_tracking_uri({server!r})\n"
        f"table = np.loadtxt({str(ROOT / 'data' / 'testData.txt')!r})\n"
        "model = mlflow.pyfunc.load_model('models:/served-spiral@champion')\n"
        "out = model.predict(pd.DataFrame(table[:, 1:], columns=['x1', 'x2']))\n"
        "print(int((out['class'].to_numpy() == np.array([str(int(v)) for v in table[:, 0]])).sum()))\n")
    env = {key: value for key, value in dlexp_env().items() if key != "PYTHONPATH"}
    env.update(ALICE)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    n = len(np.loadtxt(ROOT / "data" / "testData.txt"))
    assert int(done.stdout.split()[-1]) == round(test_acc * n)
