"""Images through every kind of worker process: DataLoader workers (also inside a parallel launcher's
worker), the picture helper, and the basic and parallel launchers with an image dataset (issue 23, 3 and 9).
The SLURM launcher with images is exercised in the full tier's cluster tests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from joblib import Parallel, delayed
from mlflow.tracking import MlflowClient
from PIL import Image
from sweep_support import run_dlexp, runs_by_kind, sqlite_store

from dlexp.data.image_dataset import CsvImageDataset
from dlexp.data.images import decode_all
from dlexp.data.splits import kfold_indices
from dlexp.errors import DlexpError, find_user_error
from dlexp.tracking.background import Writer, picture_pool

CLASSES = ("red", "green", "blue")


def tiny_image_set(root: Path, broken: int | None = None) -> tuple[Path, Path]:
    """36 32x32 JPEGs of 3 colour classes, 12 specimens of 3 photos; ``broken``: that image truncated.
    Returns (csv, image folder); the folder is the one dlexp finds beside the CSV without dataset.images."""
    folder = root / "bees"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(36):
        pixels = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
        pixels[..., i % 3] += 180
        name = f"bee {i:02d}.jpg"
        Image.fromarray(pixels).save(folder / name, quality=90)
        rows.append(f"{name},specimen {i % 12},{CLASSES[i % 3]}\n")
    if broken is not None:
        data = (folder / f"bee {broken:02d}.jpg").read_bytes()
        (folder / f"bee {broken:02d}.jpg").write_bytes(data[: len(data) // 3])
    csv = root / "bees.csv"
    csv.write_text("filename,sample,species\n" + "".join(rows))
    return csv, folder


def test_an_unreadable_image_in_a_dataloader_worker_is_the_one_line_error_of_one_process(tmp_path):
    csv, folder = tiny_image_set(tmp_path, broken=7)
    dataset = CsvImageDataset(csv, folder)
    messages = []
    for workers in (0, 2):
        with pytest.raises(DlexpError) as caught:
            decode_all(dataset, (32, 32), num_workers=workers, batch_size=4)
        messages.append(str(caught.value))
    assert messages[1] == messages[0]
    assert messages[0].startswith(f"{csv}:9: bee 07.jpg in {folder}: not a readable image (")
    assert "\n" not in messages[0] and "DataLoader worker" not in messages[0]


def _decode_in_loky_worker(csv: Path, folder: Path) -> np.ndarray:
    return decode_all(CsvImageDataset(csv, folder), (32, 32), num_workers=2, batch_size=8).numpy()


def test_dataloader_workers_start_inside_a_parallel_launchers_worker(tmp_path):
    """joblib's loky workers (hydra/launcher=parallel) have the start method 'loky', which torch's plain
    worker Process cannot be started with ('Process' object has no attribute 'env')."""
    csv, folder = tiny_image_set(tmp_path)
    here = decode_all(CsvImageDataset(csv, folder), (32, 32), num_workers=0).numpy()
    (there,) = Parallel(n_jobs=2, backend="loky")(delayed(_decode_in_loky_worker)(csv, folder) for _ in range(1))
    assert there.shape == (36, 3, 32, 32)
    np.testing.assert_array_equal(there, here)


def test_a_user_error_in_the_picture_helper_reaches_the_run_as_its_one_line():
    writer = Writer()
    raised_there = picture_pool().submit(kfold_indices, np.array([0, 1, 0, 1]), 1, 0)  # folds=1 in the helper
    writer.submit(lambda: writer.wait_for(raised_there))
    with pytest.raises(RuntimeError) as caught:
        writer.drain()
    writer.close()
    user_error = find_user_error(caught.value)
    assert str(user_error) == "trainer.folds=1: k-fold cross-validation needs at least 2 folds"


def test_a_helper_process_that_dies_mid_picture_is_one_line_naming_it():
    # killed (OOM killer, a stray kill): the run ends FAILED with one line, not the writer's traceback
    import os
    import signal
    import time

    writer = Writer()
    pool = picture_pool()
    pool.submit(int).result()  # the helper is up
    drawing = pool.submit(time.sleep, 60)  # a picture it is drawing when it is killed
    os.kill(next(iter(pool._processes)), signal.SIGKILL)
    writer.submit(lambda: writer.wait_for(drawing))
    with pytest.raises(DlexpError) as caught:
        writer.drain()
    writer.close()
    assert str(caught.value) == ("dlexp's helper process (it draws the run's pictures and makes its MLflow writes) "
                                 "ended abruptly (killed, or out of memory?): the writes it had not made are lost")
    assert picture_pool().submit(int, "7").result() == 7  # the next run gets a new helper


IMAGE_RUN = ["+experiment=insects", "trainer.folds=2", "trainer.max_epochs=2", "dataset.image_size=[32,32]",
             "trainer.num_threads=1"]


@pytest.mark.full
def test_parallel_launcher_sweeps_an_image_dataset_with_dataloader_workers(tmp_path):
    """Two jobs in joblib's workers, each decoding with the default 2 DataLoader workers (a fresh cache):
    one finishes; the other's truncated JPEG fails it with the one line a single run gives."""
    good_csv, _ = tiny_image_set(tmp_path / "good")
    bad_csv, bad_folder = tiny_image_set(tmp_path / "bad", broken=7)
    result = run_dlexp("-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", *IMAGE_RUN,
                       f"dataset.csv={good_csv},{bad_csv}", f"dataset.cache_dir={tmp_path}/cache",
                       *sqlite_store(tmp_path), timeout=600)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "could not be pickled" not in result.stderr and "pickle error" not in result.stderr
    assert "Traceback" not in result.stderr and "Caught DlexpError" not in result.stderr
    line = f"{bad_csv}:9: bee 07.jpg in {bad_folder}: not a readable image ("
    job_lines = [x for x in result.stderr.splitlines() if x.startswith("[job 1] error:")]
    assert len(job_lines) == 1 and job_lines[0].startswith(f"[job 1] error: {line}"), result.stderr[-3000:]
    assert "2 jobs: 1 FAILED, 1 FINISHED):" in result.stderr + result.stdout

    _, jobs, folds = runs_by_kind(MlflowClient(f"sqlite:///{tmp_path}/mlflow.db"), "insects")
    finished = [r for r in jobs if r.info.status == "FINISHED"]
    assert len(finished) == 1 and finished[0].data.params["dataset.csv"] == str(good_csv)
    assert len([f for f in folds if f.info.status == "FINISHED"]) == 2
    assert len(list((tmp_path / "cache").glob("images-*.pt"))) == 1


@pytest.mark.full
def test_basic_launcher_multirun_of_an_image_dataset(tmp_path):
    csv, folder = tiny_image_set(tmp_path)
    result = run_dlexp("-m", *IMAGE_RUN, "optimizer.lr=0.001,0.003", f"dataset.csv={csv}",
                       f"dataset.images={folder}", f"dataset.cache_dir={tmp_path}/cache", *sqlite_store(tmp_path),
                       timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    _, jobs, _ = runs_by_kind(MlflowClient(f"sqlite:///{tmp_path}/mlflow.db"), "insects")
    assert len(jobs) == 2 and {r.info.status for r in jobs} == {"FINISHED"}
    summaries = [json.loads((tmp_path / "sweep" / str(n) / "summary.json").read_text()) for n in (0, 1)]
    assert all(s["class_names"] == sorted(CLASSES) for s in summaries)


class _Killed:
    """A dataset whose reading kills the process reading it (as the kernel's out-of-memory killer would)."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        import os
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_that_dies_is_one_line_naming_it_and_the_way_round():
    from dlexp.data.workers import batches

    with pytest.raises(DlexpError) as caught:
        list(batches(_Killed(), batch_size=2, num_workers=1))
    message = str(caught.value)
    assert re.fullmatch(r"a DataLoader worker process stopped: DataLoader worker \(pid \d+\) is killed by signal: "
                        r"Killed; dataset.num_workers=0 reads the data in this process", message), message
