"""Loading a finished run's model back from its run folder, safely.

``model.pt`` holds only tensors, so it is read with ``torch.load(..., weights_only=True)``: a tampered
or foreign file cannot run code on load.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import OmegaConf

from dlexp.config.build import build
from dlexp.errors import DlexpError


def load_model(run_dir: str | Path, map_location: str = "cpu") -> tuple[torch.nn.Module, list[str]]:
    """The reported model of the run in ``run_dir`` (in eval mode) and its class names."""
    run_dir = Path(run_dir)
    needed = [run_dir / name for name in ("config_resolved.yaml", "summary.json", "model.pt")]
    if missing := [path.name for path in needed if not path.is_file()]:
        failed = " (the run failed: see FAILED.txt)" if (run_dir / "FAILED.txt").is_file() else ""
        raise DlexpError(f"{run_dir}: not a finished dlexp run folder, missing {', '.join(missing)}{failed}")
    cfg = OmegaConf.load(needed[0])
    summary = json.loads(needed[1].read_text())
    model = build("model", cfg.model, input_shape=tuple(summary["input_shape"]),
                  num_classes=len(summary["class_names"]))
    model.load_state_dict(torch.load(needed[2], map_location=map_location, weights_only=True))
    return model.eval(), summary["class_names"]
