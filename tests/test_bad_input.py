"""Every user mistake through the real entrypoint: exit code, a message naming the culprit, no traceback,
and nothing in the MLflow store that looks like a result."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import PROJECT_ROOT

SPIRAL = ["+experiment=spiral", "trainer.max_epochs=2", "plots.grid_resolution=10"]


def run_dlexp(args, cwd=PROJECT_ROOT):
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", "dlexp", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def run_dlexp_in_this_process(args, monkeypatch, capsys):
    """``python -m dlexp ARGS`` as Python runs it (``runpy`` with ``__name__ == "__main__"``), in this process:
    the same code path and exit code as run_dlexp without a new interpreter's ~4 s of imports, for the many
    mistakes that end before training. The path from a fresh process is run_dlexp's (the other tests here)."""
    import gc
    import runpy

    monkeypatch.chdir(PROJECT_ROOT)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    monkeypatch.setattr(sys, "argv", ["dlexp", *args])
    monkeypatch.delitem(sys.modules, "dlexp.__main__", raising=False)  # runpy runs it afresh, as a new process
    thresholds = gc.get_threshold()
    code = 0
    try:
        runpy.run_module("dlexp", run_name="__main__", alter_sys=True)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        gc.unfreeze()  # what dlexp's __main__ does for a process about to end
        gc.set_threshold(*thresholds)
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(["dlexp", *args], code, captured.out, captured.err)


def free_port() -> int:
    """A loopback port nothing listens on."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def point_file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def train_file(name, text, *extra):
    """Overrides that train and test on a file ``name`` holding ``text``."""

    def overrides(tmp):
        path = point_file(tmp, name, text)
        return [f"dataset.train_path={path}", f"dataset.test_path={path}", *extra]

    return overrides


GOOD_TRAIN = "".join(f"{i % 3} {i / 10:.1f} {-i / 10:.1f}\n" for i in range(30))

# (id, overrides made from tmp_path, expected fragment of the message, expected exit code)
CASES = [
    ("folds<2", lambda t: ["trainer.folds=1"], "trainer.folds=1: expected an integer >= 2", 2),
    ("folds-type", lambda t: ["trainer.folds=five"], "trainer.folds='five': expected an integer >= 2", 2),
    ("lr<=0", lambda t: ["optimizer.lr=0"], "optimizer.lr=0: expected a number > 0", 2),
    ("lr-negative", lambda t: ["optimizer.lr=-0.1"], "optimizer.lr=-0.1: expected a number > 0", 2),
    ("hidden-empty", lambda t: ["model.hidden_dims=[]"], "model.hidden_dims=[]: expected a non-empty list", 2),
    ("hidden-nonpositive", lambda t: ["model.hidden_dims=[64,0]"], "model.hidden_dims=[64, 0]", 2),
    ("patience<0", lambda t: ["trainer.patience=-3"], "trainer.patience=-3: expected an integer >= 1", 2),
    ("patience=0", lambda t: ["trainer.patience=0"],
     "trainer.patience=0: expected an integer >= 1 (epochs without a lower validation loss before a fold "
     "stops), or null for no early stopping", 2),
    ("best-metric-mode", lambda t: ["tracking.best_metric_mode=lowest"],
     "tracking.best_metric_mode='lowest': expected auto (from the metric's name), max or min", 2),
    ("batch<1", lambda t: ["trainer.batch_size=0"], "trainer.batch_size=0: expected an integer >= 1", 2),
    ("device-cuda", lambda t: ["trainer.device=cuda"], "trainer.device=cuda: no CUDA device", 2),
    ("device-unknown", lambda t: ["trainer.device=tpu"], "trainer.device='tpu': expected cpu, cuda", 2),
    ("activation", lambda t: ["model.activation=swish"], "model.activation='swish': unknown activation", 2),
    ("optimizer-arg", lambda t: ["+optimizer.momentum=0.9"], "optimizer: cannot build torch.optim.Adam", 2),
    ("unknown-key", lambda t: ["trainer.epochs=3"], "trainer.epochs", 1),
    ("unknown-group-option", lambda t: ["optimizer=adamm"], "optimizer/adamm", 1),
    ("tracking-server-unreachable", lambda t: [f"tracking.uri=http://127.0.0.1:{free_port()}"],
     "no MLflow server answers there", 2),
    ("tracking-store-under-a-file", lambda t: [f"tracking.uri=sqlite:///{point_file(t, 'f', '')}/m.db"],
     "cannot open a SQLite store there (File exists: ", 2),
    ("missing-file", lambda t: [f"dataset.train_path={t}/nope.txt"], "nope.txt: data file not found", 2),
    ("empty-file", train_file("e.txt", ""), "e.txt: file is empty", 2),
    ("ragged", train_file("r.txt", GOOD_TRAIN + "1 0.5\n"),
     "r.txt:31: ragged row", 2),
    ("non-numeric", train_file("n.txt", GOOD_TRAIN + "1 0.5 x\n"),
     "n.txt:31: column 3 is not a number: 'x'", 2),
    ("nan", train_file("nan.txt", "1 nan 0.5\n" + GOOD_TRAIN),
     "nan.txt:1: column 2 is not finite: 'nan'", 2),
    ("inf", train_file("inf.txt", GOOD_TRAIN + "1 0.5 -inf\n"),
     "inf.txt:31: column 3 is not finite: '-inf'", 2),
    ("single-class", train_file("one.txt", "1 0 0\n1 1 1\n" * 5),
     "one.txt: only one class (1)", 2),
    ("fewer-samples-than-folds",
     train_file("s.txt", "0 0 0\n1 1 1\n2 2 2\n", "trainer.stratify=false"),
     "trainer.folds=5: only 3 training samples, fewer than the folds", 2),
    ("class-smaller-than-folds",
     train_file("c.txt", GOOD_TRAIN + "7 0 0\n"),
     "class index 3 has only 1 samples", 2),
]


@pytest.mark.parametrize(("make_overrides", "expected", "code"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error(tmp_path, store, make_overrides, expected, code, monkeypatch, capsys):
    result = run_dlexp_in_this_process([*SPIRAL, *store["overrides"], *make_overrides(tmp_path),
                                        f"hydra.run.dir={tmp_path / 'run'}"], monkeypatch, capsys)
    output = result.stdout + result.stderr
    assert result.returncode == code, output
    assert expected in output
    assert "Traceback" not in output
    if code == 2:
        error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(error_lines) == 1, result.stderr
    # Nothing was started: no run in the store, no summary claiming success.
    experiment = store["client"].get_experiment_by_name("spiral")
    assert experiment is None or not store["client"].search_runs([experiment.experiment_id])
    assert not (tmp_path / "run" / "summary.json").exists()


def test_a_sweep_whose_store_cannot_be_opened_stops_before_its_jobs(tmp_path):
    """Hydra only warns when a callback raises: the sweep must stop itself, not run its jobs untracked."""
    result = run_dlexp(["-m", *SPIRAL, "optimizer.lr=0.1,0.01", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                        f"tracking.uri=sqlite:///{point_file(tmp_path, 'f', '')}/m.db"])
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"error: the sweep's MLflow run could not be opened: tracking.uri=sqlite:///{tmp_path}/f/m.db: "
        f"cannot open a SQLite store there (File exists: {tmp_path}/f)")
    assert "Traceback" not in result.stderr
    assert not list((tmp_path / "sweep").glob("*/.hydra"))  # no job started


def test_diverging_training_fails_the_run_with_the_reason(tmp_path, store):
    """A NaN loss is a user-facing error too: exit 2, the run FAILED with the reason, the folder says so."""
    run_dir = tmp_path / "run"
    result = run_dlexp([*SPIRAL, *store["overrides"], "optimizer.lr=1e30", f"hydra.run.dir={run_dir}"])
    assert result.returncode == 2, result.stderr
    assert "error: fold 1: train loss is nan at epoch 1; training diverged" in result.stderr
    assert "Traceback" not in result.stderr
    client = store["client"]
    runs = client.search_runs([client.get_experiment_by_name("spiral").experiment_id])
    # The job run, and every fold's run (open since its fold started; all 5 folds diverge), FAILED with the reason.
    assert sorted((r.data.tags.get("dlexp.fold", "job"), r.info.status, r.data.tags["dlexp.error"].split(":")[0])
                  for r in runs) == [(name, "FAILED", "TrainingDiverged") for name in ("1", "2", "3", "4", "5", "job")]
    assert (run_dir / "FAILED.txt").read_text().startswith("FAILED: TrainingDiverged: fold 1")
    assert not (run_dir / "summary.json").exists() and not (run_dir / "model.pt").exists()


# Image experiment inputs: a tiny generated bee set, broken in one way per case.
IMAGE_RUN = ["+experiment=insects", "trainer.max_epochs=2", "trainer.folds=2", "dataset.image_size=[16,16]",
             "dataset.num_workers=0", "dataset.cache_dir=null", "model.channels=[4]", "model.hidden_dims=[8]"]
SPECIES = ["Andrena fulva", "Bombus terrestris", "Osmia bicornis"]


def write_bees(folder, modes=("RGB",)):
    """12 JPEG/PNG images of 3 species and 6 specimens; returns the CSV rows (filename, species, sample)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(12):
        mode = modes[i % len(modes)]
        name = f"bee {i}.{'png' if mode in ('RGBA', 'I;16') else 'jpg'}"
        pixels = np.random.default_rng(i).integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)
        image = Image.fromarray(pixels[..., 0].astype(np.uint16) * 257) if mode == "I;16" else \
            Image.fromarray(pixels).convert(mode)
        image.save(folder / name)
        rows.append((name, SPECIES[i % 3], f"s{i % 6}"))
    return rows


def write_csv(path, rows, header="filename,species,sample"):
    path.write_text(header + "\n" + "".join(",".join(row) + "\n" for row in rows))
    return path


def bees_without_label_column(tmp):
    rows = write_bees(tmp / "imgs")
    return [f"dataset.csv={write_csv(tmp / 'b.csv', rows, 'filename,kind,sample')}", f"dataset.images={tmp}/imgs"]


def bees_with_missing_image(tmp):
    rows = write_bees(tmp / "imgs") + [("ghost.jpg", SPECIES[0], "s0")]
    return [f"dataset.csv={write_csv(tmp / 'b.csv', rows)}", f"dataset.images={tmp}/imgs"]


def bees_with_truncated_jpeg(tmp):
    rows = write_bees(tmp / "imgs")
    broken = tmp / "imgs" / rows[3][0]
    broken.write_bytes(broken.read_bytes()[:200])
    return [f"dataset.csv={write_csv(tmp / 'b.csv', rows)}", f"dataset.images={tmp}/imgs"]


def bees_in_zip_escaping_the_archive(tmp):
    """The CSV lists evil.jpg, which the zip holds only as ../evil.jpg and /abs/evil.jpg: never read."""
    import zipfile

    rows = write_bees(tmp / "imgs")
    with zipfile.ZipFile(tmp / "bees.zip", "w") as archive:
        for name, _, _ in rows:
            archive.write(tmp / "imgs" / name, f"Insects/{name}")
        payload = (tmp / "imgs" / rows[0][0]).read_bytes()
        for unsafe in ("../evil.jpg", "/abs/evil.jpg"):  # ZipInfo keeps the name as given (write() would not)
            archive.writestr(zipfile.ZipInfo(unsafe), payload)
    rows.append(("evil.jpg", SPECIES[1], "s1"))
    return [f"dataset.csv={write_csv(tmp / 'b.csv', rows)}", f"dataset.images={tmp}/bees.zip"]


IMAGE_CASES = [
    ("csv-without-label-column", bees_without_label_column, "b.csv"),
    ("image-listed-but-missing", bees_with_missing_image, "ghost.jpg"),
    ("truncated-jpeg", bees_with_truncated_jpeg, "bee 3.jpg"),
    ("zip-entry-outside-archive", bees_in_zip_escaping_the_archive, "evil.jpg"),
]


@pytest.mark.parametrize(("make_overrides", "culprit"), [c[1:] for c in IMAGE_CASES],
                         ids=[c[0] for c in IMAGE_CASES])
def test_bad_image_input_is_one_clear_error(tmp_path, store, make_overrides, culprit):
    result = run_dlexp([*IMAGE_RUN, *store["overrides"], *make_overrides(tmp_path),
                        f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.returncode == 2, result.stdout + result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and culprit in error_lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    experiment = store["client"].get_experiment_by_name("insects")
    assert experiment is None or not store["client"].search_runs([experiment.experiment_id])


# The conversion itself is in the fast tier: tests/test_images.py::test_dataset_returns_full_images_and_species_names
@pytest.mark.full  # a whole image run, ~20 s of CPU
def test_grayscale_cmyk_rgba_and_16_bit_images_are_converted_not_rejected(tmp_path, store):
    rows = write_bees(tmp_path / "imgs", modes=("L", "CMYK", "RGBA", "I;16"))
    result = run_dlexp([*IMAGE_RUN, *store["overrides"], f"dataset.csv={write_csv(tmp_path / 'b.csv', rows)}",
                        f"dataset.images={tmp_path}/imgs", f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.returncode == 0, result.stderr
    client = store["client"]
    runs = client.search_runs([client.get_experiment_by_name("insects").experiment_id],
                              filter_string="tags.`dlexp.fold` IS NULL")
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert runs[0].data.params["dataset.image_size"] == "[16, 16]"
