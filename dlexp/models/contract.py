"""The model contract, checked on the first batch before any training (see :mod:`dlexp.models`).

A model class of one's own gets one line naming the class and what was expected when it breaks the contract,
instead of a traceback from deep inside the training loop (or no error at all, for NaN logits).
"""

from __future__ import annotations

import torch
from torch import nn

from dlexp.data.protocol import ExperimentData
from dlexp.errors import DlexpError


def class_name(model: object) -> str:
    """``mynet.TinyNet``: the module and name of the model's class, as a ``_target_`` would spell it."""
    kind = type(model)
    return f"{kind.__module__}.{kind.__qualname__}"


def check_model(model: object, data: ExperimentData, batch_size: int = 8) -> None:
    """Run the model on the first ``batch_size`` training rows (through ``data.eval_transform``, in eval mode,
    without gradients) and raise :class:`DlexpError` unless it keeps the contract:

    - it is a ``torch.nn.Module`` with at least one trainable parameter;
    - it accepts a float batch ``(N, *data.input_shape)`` (what it was built with as ``input_shape=``);
    - it returns one floating-point tensor of logits of shape ``(N, data.n_classes)``, all finite.

    The model is left in training mode and unchanged (no optimizer step; BatchNorm statistics are not
    updated in eval mode).
    """
    name = class_name(model)
    if not isinstance(model, nn.Module):
        raise DlexpError(f"model: {name} is not a torch.nn.Module; the model's _target_ must build one")
    if not any(p.requires_grad for p in model.parameters()):
        raise DlexpError(f"model: {name} has no trainable parameters; expected layers (nn.Linear, nn.Conv2d, ...) "
                         "assigned as attributes in __init__ (plain lists of layers are not registered: use "
                         "nn.ModuleList or nn.Sequential)")
    parameter = next(model.parameters())
    n = min(batch_size, len(data.x_train))
    batch = data.x_train[:n].to(parameter.device)
    if data.eval_transform is not None:
        batch = data.eval_transform(batch)
    shape = tuple(batch.shape)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(batch)
    except Exception as error:  # noqa: BLE001 - any failure here is the model not taking the data's batches
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DlexpError(f"model: {name} cannot take the data's batches: a {batch.dtype} batch of shape {shape} "
                         f"(N x input_shape={tuple(data.input_shape)}) raised {type(error).__name__}: "
                         f"{reason}") from None
    finally:
        model.train(was_training)
    expected = (n, data.n_classes)
    if not isinstance(output, torch.Tensor):
        raise DlexpError(f"model: {name}.forward returned {type(output).__name__}; expected one tensor of logits "
                         f"of shape (N, num_classes) = {expected}")
    if tuple(output.shape) != expected:
        raise DlexpError(f"model: {name}.forward returned shape {tuple(output.shape)} for a batch of shape "
                         f"{shape}; expected logits of shape (N, num_classes) = {expected}")
    if not output.is_floating_point():
        raise DlexpError(f"model: {name}.forward returned {output.dtype} values; expected floating-point logits")
    if not torch.isfinite(output).all():
        bad = "NaN" if torch.isnan(output).any() else "infinite"
        raise DlexpError(f"model: {name}.forward returned {bad} values for the first batch before any training; "
                         "expected finite logits (check its initialisation and arithmetic)")
