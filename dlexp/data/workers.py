"""Batches of a Dataset from DataLoader worker processes that start inside any launcher's worker and hand
dlexp's own errors back whole.

Two things torch's DataLoader does not do for us (both seen, see issue 23):

- Inside a worker of joblib's loky (``hydra/launcher=parallel``) multiprocessing's default start method is
  ``loky``, whose ``Popen`` expects loky's own Process class (it reads ``process_obj.env``), so the plain
  Process torch creates cannot start: ``'Process' object has no attribute 'env'``. There the workers are
  forked instead; ``spawn`` and ``forkserver`` do not work either (measured: their children inherit the
  start method ``loky``, which plain multiprocessing does not know, and die).
- An exception in a worker reaches the caller as torch's ``ExceptionWrapper`` rebuilt it: the same type,
  but its message is "Caught DlexpError in DataLoader worker process 0. Original Traceback ..." (the
  whole traceback as text, the exception object itself is lost). A :class:`DlexpError` is therefore
  returned from the worker as data instead (it pickles: its only argument is its message) and raised
  again here, so the user reads the one line a single process gives.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from multiprocessing.context import BaseContext

from torch.utils.data import DataLoader, Dataset, default_collate

from dlexp.errors import DlexpError
from dlexp.interrupts import ignore_requeue_signal

#: The start methods plain multiprocessing (and so torch's DataLoader) can start a worker with.
STANDARD_METHODS = ("fork", "spawn", "forkserver")


def worker_context(num_workers: int) -> tuple[int, BaseContext | None]:
    """``(num_workers, multiprocessing_context)`` for a DataLoader started in this process.

    ``None`` (torch's default) where the start method is a standard one, so the usual path is unchanged;
    under another one (``loky`` in a joblib worker) ``fork``, or, where there is no fork (Windows),
    ``num_workers=0``: decoding in this process.
    """
    if num_workers == 0 or multiprocessing.get_start_method(allow_none=True) in (None, *STANDARD_METHODS):
        return num_workers, None
    if "fork" in multiprocessing.get_all_start_methods():
        return num_workers, multiprocessing.get_context("fork")
    return 0, None


class _Failed:
    """A worker's DlexpError travelling back as an item (and a batch) instead of as torch's wrapper."""

    def __init__(self, error: DlexpError) -> None:
        self.error = error


class _CarryErrors(Dataset):
    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> object:
        try:
            return self.dataset[index]
        except DlexpError as error:
            return _Failed(DlexpError(str(error)))  # no traceback or cause: those do not pickle


def _collate(items: list) -> object:
    return next((item for item in items if isinstance(item, _Failed)), None) or default_collate(items)


def _worker_start(worker_id: int) -> None:
    ignore_requeue_signal()  # SLURM's warning is for the job's own process (dlexp.sweeps.slurm)


def batches(dataset: Dataset, batch_size: int, num_workers: int) -> Iterator:
    """The dataset's items in order, ``batch_size`` at a time, collated as a DataLoader does, read by
    ``num_workers`` worker processes (0: in this process).

    Raises the DlexpError an item raised, as that one-line error, whichever process read it; a worker that
    died (killed, out of memory) is a DlexpError saying so and how to decode without workers.
    """
    num_workers, context = worker_context(num_workers)
    loader = DataLoader(_CarryErrors(dataset), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=_collate, multiprocessing_context=context, persistent_workers=False,
                        worker_init_fn=_worker_start if num_workers else None)
    try:
        for batch in loader:
            if isinstance(batch, _Failed):
                raise batch.error
            yield batch
    except RuntimeError as error:
        if not str(error).startswith("DataLoader worker"):
            raise
        cause = error  # torch's "exited unexpectedly" is raised from the one that says why ("killed by signal")
        while isinstance(cause.__cause__, RuntimeError) and str(cause.__cause__).startswith("DataLoader worker"):
            cause = cause.__cause__
        why = str(cause).strip().rstrip(".")
        raise DlexpError(f"a DataLoader worker process stopped: {why}; dataset.num_workers=0 reads the data in "
                         "this process") from error
