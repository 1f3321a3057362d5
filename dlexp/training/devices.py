"""The ``trainer.device`` option: honest about what this machine has."""

from __future__ import annotations

import torch

from dlexp.errors import DlexpError


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` (must exist here) or ``auto`` (cuda when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DlexpError(f"trainer.device={name}: no CUDA device is available here; use cpu or auto")
        try:
            device = torch.device(name)
        except RuntimeError:
            raise DlexpError(f"trainer.device={name!r}: expected cpu, cuda, cuda:N or auto") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DlexpError(f"trainer.device={name}: this machine has {torch.cuda.device_count()} CUDA "
                             f"device(s), numbered from 0")
        return device
    raise DlexpError(f"trainer.device={name!r}: expected cpu, cuda, cuda:N or auto")
