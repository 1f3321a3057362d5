"""Training all k folds at once: the folds' MLPs stacked into one batched model.

A tiny MLP on a few hundred points spends its time in per-call overhead, not arithmetic, so one step
for k stacked folds costs about what one step for one fold does. Each fold still has its own data
order (the same generator as the sequential path), its own Adam state and step count, its own early
stopping and best weights, and its loss is the mean over its own batch. A fold that stops is dropped
from the batch, so nothing touches its weights or metrics again.

Only what stacks exactly is batched (:func:`batching_obstacle` says why not otherwise): Linear,
activation and dropout layers, Adam/AdamW, epoch-driven LR schedules and cross-entropy on class indices.
Each fold draws its dropout masks from a generator of its own (dlexp.training.stacked.dropout_generator,
seeded from the fold's seed), one mask per sample; the draws are not those of one-by-one training (which uses
torch's global generator as ``nn.Dropout`` does), their distribution is.

The training loop itself is dlexp.training.stacked's (several jobs' folds in one stack); a job's folds alone
are the one-job case (:func:`train_folds_batched`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from dlexp.models.mlp import ACTIVATIONS
from dlexp.training.loop import NO_HOOKS, FoldResult, TrainingHooks
from dlexp.training.losses import ClassificationLoss

log = logging.getLogger(__name__)

ELEMENTWISE_LAYERS = (nn.Flatten, nn.Dropout, *ACTIVATIONS.values())
#: Activations whose derivative follows from their output, which get a hand-written backward pass: each
#: maps to (its function, the gradient through it from its output, ATen's fused op for that gradient).
#: The fused ops are private torch API, used where they work (:func:`activation_backward`) because
#: ``g * (out > 0)`` costs 15 µs on a (5, 50, 64) tensor against 2.6 µs for ``threshold_backward``.
ACTIVATION_OPS = {
    nn.ReLU: (torch.relu, lambda g, out: g * (out > 0), "threshold_backward"),
    nn.Tanh: (torch.tanh, lambda g, out: g * (1 - out * out), "tanh_backward"),
    nn.Sigmoid: (torch.sigmoid, lambda g, out: g * out * (1 - out), "sigmoid_backward"),
}
#: The in-place forms of ACTIVATION_OPS' functions (same kernels, same results, no new tensor).
IN_PLACE = {nn.ReLU: torch.relu_, nn.Tanh: torch.tanh_, nn.Sigmoid: torch.sigmoid_}
#: torch's warning when a scheduler steps and the optimizer's own step() never ran (ours is StackedAdam's).
SCHEDULER_ORDER_WARNING = re.escape("Detected call of `lr_scheduler.step()` before `optimizer.step()`")
#: What a private torch API raises where this torch lacks it or cannot run it here.
PRIVATE_API_ERRORS = (AttributeError, RuntimeError, TypeError, NotImplementedError)


def activation_backward(layer_type: type[nn.Module], device: torch.device) -> Callable:
    """The gradient through an activation from its output: ATen's fused op when it exists in this torch
    and gives the public formula's result on ``device``, else the public formula."""
    _, public, name = ACTIVATION_OPS[layer_type]
    g = torch.tensor([[0.5, -2.0, 1.5]], device=device)
    out = ACTIVATION_OPS[layer_type][0](torch.tensor([[0.3, -0.7, 0.0]], device=device))
    try:
        op = getattr(torch.ops.aten, name)
        fused = (lambda g, out: op(g, out, 0)) if name == "threshold_backward" else op
        if torch.allclose(fused(g, out), public(g, out)):
            return fused
    except PRIVATE_API_ERRORS as error:
        log.info("batched training: torch.ops.aten.%s unusable here (%s); using the public formula",
                 name, error)
    return public


OPTIMIZERS = (torch.optim.Adam, torch.optim.AdamW)
#: Elements per row from which elementwise ops on stacked rows round every row alike (StackedMLP.activation).
ALIGNED = 64


def batching_obstacle(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                      loss_fn: nn.Module) -> str | None:
    """Why one fold's objects cannot be trained batched (a short reason naming the config key), or None."""
    if not isinstance(model, nn.Sequential):
        return f"model: {type(model).__name__} is not a sequence of Linear and activation layers"
    for layer in model:
        stackable = isinstance(layer, ELEMENTWISE_LAYERS) or (isinstance(layer, nn.Linear)
                                                              and layer.bias is not None)
        if not stackable:
            return f"model: layer {type(layer).__name__} cannot be stacked across folds"
    if type(optimizer) not in OPTIMIZERS:
        return f"optimizer: {type(optimizer).__name__} (batched training implements Adam and AdamW)"
    group = optimizer.param_groups[0]
    if len(optimizer.param_groups) != 1 or group.get("amsgrad") or group.get("maximize"):
        return "optimizer: amsgrad, maximize and several parameter groups are not batched"
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        return "scheduler: ReduceLROnPlateau depends on each fold's validation loss"
    criterion = getattr(loss_fn, "criterion", None)
    if not (isinstance(loss_fn, ClassificationLoss) and type(criterion) is nn.CrossEntropyLoss
            and loss_fn.inputs == "logits" and loss_fn.targets == "index"
            and criterion.weight is None and criterion.reduction == "mean"):
        return "loss: batched training implements plain cross-entropy on logits and class indices"
    return None


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """``logits.softmax(dim=-1)`` for few classes. Torch's CPU kernel is slow when the last dimension is
    small: 18 µs on (5, 50, 5) logits against 8 µs for these five calls (measured, torch 2.14)."""
    e = (logits - logits.amax(dim=-1, keepdim=True)).exp_()
    return e.div_(e.sum(dim=-1, keepdim=True))


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``logits.log_softmax(dim=-1)`` for few classes, like :func:`softmax`: 79 µs against 227 µs on an
    epoch's (20, 5, 50, 5) logits."""
    shifted = logits - logits.amax(dim=-1, keepdim=True)
    return shifted - shifted.exp().sum(dim=-1, keepdim=True).log_()


class StackedMLP:
    """k MLPs of one architecture as one flat ``(k, n_params)`` weight tensor and a batched forward.

    A Linear layer is a weight matrix followed by its bias; the forward is one ``baddbmm`` per layer over
    inputs of shape ``(k, batch, in)``. Each weight is stored with its smaller dimension first, ``(in, out)``
    or torch's own ``(out, in)``: CPU matmuls whose result has a last dimension of 2 or 5 are 3-4x slower
    than the same product the other way round (measured on this project's 2-64-32-5 spiral MLP).
    """

    def __init__(self, models: Sequence[nn.Sequential], layers: Sequence[nn.Module] | None = None) -> None:
        #: the layers every model runs through; models stacked with others whose dropout differs get theirs
        #: from dlexp.training.stacked.stack_layers (a Dropout wherever any of them has one)
        self.layers = list(models[0]) if layers is None else list(layers)
        #: rows per block of rows computed apart in elementwise activations (see ``activation``), or None
        self.blocks: list[int] | None = None
        linears = [layer for layer in self.layers if isinstance(layer, nn.Linear)]
        #: per Linear layer: True if its weight is stored as torch's (out, in), False if as (in, out)
        self.out_first = [layer.out_features < layer.in_features for layer in linears]
        self.shapes: list[tuple[int, ...]] = []
        for layer, out_first in zip(linears, self.out_first, strict=True):
            self.shapes += [tuple(layer.weight.shape) if out_first else tuple(layer.weight.t().shape),
                            (1, layer.out_features)]
        self.sizes = [math.prod(shape) for shape in self.shapes]
        self.weights = torch.stack([
            torch.cat([part.reshape(-1) for layer, out_first in
                       zip((m for m in model if isinstance(m, nn.Linear)), self.out_first, strict=True)
                       for part in (layer.weight.detach() if out_first else layer.weight.detach().t(),
                                    layer.bias.detach())])
            for model in models])
        self.manual_backward = all(type(layer) in ACTIVATION_OPS for layer in self.layers
                                   if not isinstance(layer, nn.Linear | nn.Flatten | nn.Dropout))
        device = self.weights.device
        self.backward_ops = {kind: activation_backward(kind, device) for kind in
                             {type(layer) for layer in self.layers} & ACTIVATION_OPS.keys()}

    def bind(self, weights: torch.Tensor, blocks: list[int] | None = None) -> None:
        """Train ``weights`` (one row per running fold) from now on.

        ``blocks`` (rows per job, in order, summing to ``len(weights)``) makes elementwise activations run
        on each job's rows apart where a stacked call could round a row differently (:meth:`activation`).

        The per-layer views (and the ``(k, out, in)`` ones the backward pass multiplies by) are made here,
        once per change of the running folds, not once per step: at this size every tensor call is a
        measurable cost.
        """
        self.params = self.views(weights)
        self.blocks = blocks if blocks is not None and len(blocks) > 1 else None
        if not self.manual_backward:  # autograd differentiates the views
            self.params = [view.requires_grad_() for view in self.params]
        self.backward_weights = [w if out_first else w.transpose(1, 2)
                                 for w, out_first in zip(self.params[0::2], self.out_first, strict=True)]

    def views(self, weights: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer weight and bias tensors ``(k, *stored shape)`` sharing memory with ``weights``."""
        return [part.view(len(weights), *shape)
                for part, shape in zip(weights.split(self.sizes, dim=1), self.shapes, strict=True)]

    def activation(self, op: Callable, *tensors: torch.Tensor) -> torch.Tensor:
        """``op(*tensors)`` for an elementwise op on ``(k, batch, width)`` tensors, each row computed as it
        would be in a stack of its own job's rows only.

        torch's CPU kernels run the vectorised body over a flat tensor and a scalar tail over its last
        elements, and for some ops (sigmoid, measured on torch 2.14) the two round differently; when a row's
        ``batch * width`` elements are not a multiple of ``ALIGNED``, where the tail falls depends on the rows
        around it, so such ops run on each job's rows apart (``blocks``). Rows of a multiple of ``ALIGNED``
        elements never reach a tail (64 floats: two 512-bit vectors, the widest loop step, twice over).
        """
        if self.blocks is None or tensors[0][0].numel() % ALIGNED == 0:
            return op(*tensors)
        if op in IN_PLACE.values():  # each block in place: no copy of the parts into a new tensor
            for part in tensors[0].split(self.blocks):
                op(part)
            return tensors[0]
        return torch.cat([op(*parts) for parts in zip(*(t.split(self.blocks) for t in tensors), strict=True)])

    def forward(self, x: torch.Tensor, saved: list[torch.Tensor] | None = None,
                training: bool = False, masks: Sequence[torch.Tensor] | None = None) -> torch.Tensor:
        """Logits ``(k, batch, classes)`` of inputs ``(k, batch, ...)`` with the bound weights.

        ``masks`` (one ``(k, batch, width)`` tensor per Dropout layer, already scaled by ``1 / (1 - p)``; ones
        for a row without dropout) are the dropout masks of a training step. Without them, ``training`` draws
        a fresh mask per call from torch's global generator as ``nn.Dropout`` does; evaluation leaves dropout
        out. With ``saved``, appends each Linear layer's input, each activation's output and each dropout
        mask, which is what the hand-written backward pass needs.
        """
        linear = dropout = 0
        fresh = False  # whether x is a tensor of this call's own (which an activation may overwrite)
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                if saved is not None:
                    saved.append(x)
                weight = self.params[2 * linear]
                x = torch.baddbmm(self.params[2 * linear + 1], x,
                                  weight.transpose(1, 2) if self.out_first[linear] else weight)
                linear, fresh = linear + 1, True
            elif isinstance(layer, nn.Flatten):
                x, fresh = x.flatten(2), False
            elif isinstance(layer, nn.Dropout):
                mask = None
                if masks is not None:
                    mask, dropout = masks[dropout], dropout + 1
                elif training and layer.p > 0:
                    mask = torch.empty_like(x).bernoulli_(1 - layer.p).div_(1 - layer.p)
                if mask is not None:
                    x, fresh = x * mask, True
                    if saved is not None:
                        saved.append(mask)
            else:
                if fresh and self.manual_backward:  # in place: a new tensor of this size costs more than the op
                    x = self.activation(IN_PLACE[type(layer)], x)
                else:
                    x = self.activation(ACTIVATION_OPS[type(layer)][0] if type(layer) in ACTIVATION_OPS else layer, x)
                    fresh = True
                if saved is not None:
                    saved.append(x)
        return x

    def logits_and_grad(self, x: torch.Tensor, neg_scaled_target: torch.Tensor, weight: torch.Tensor,
                        masks: Sequence[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(k, batch, classes)`` and the gradient of the summed fold losses, flat like the weights.

        ``weight`` ``(k, batch, 1)`` is ``1 / batch size`` per sample (0 for padding), so a fold's loss is the
        mean over its own batch; ``neg_scaled_target`` is ``-target * weight``, the targets being class
        probabilities (label smoothing included). The losses themselves are computed once per epoch from
        the logits (:func:`epoch_train_losses`), not per step. ReLU, Tanh and Sigmoid networks get a
        hand-written backward pass (half the calls of autograd's, which is what a step of a tiny model
        costs); other activations go through autograd. ``masks``: the step's dropout masks (:meth:`forward`).
        """
        if not self.manual_backward:
            logits = self.forward(x, training=True, masks=masks)
            loss = (neg_scaled_target * logits.log_softmax(dim=2)).sum()
            grads = torch.autograd.grad(loss, self.params)
            return logits.detach(), torch.cat([g.flatten(1) for g in grads], dim=1)
        saved: list[torch.Tensor] = []
        logits = self.forward(x, saved, training=True, masks=masks)
        # d(sum of fold losses) / d(logits) = weight * (softmax - target)
        g = torch.addcmul(neg_scaled_target, softmax(logits), weight)
        linear = len(self.out_first)
        parts = []
        for layer in reversed(self.layers):
            if isinstance(layer, nn.Linear):
                linear -= 1
                inputs = saved.pop()
                parts.append(g.sum(dim=1))
                parts.append((torch.bmm(g.transpose(1, 2), inputs) if self.out_first[linear]
                             else torch.bmm(inputs.transpose(1, 2), g)).flatten(1))
                if linear:
                    g = torch.bmm(g, self.backward_weights[linear])
            elif isinstance(layer, nn.Dropout):
                if masks is not None or layer.p > 0:
                    g = g * saved.pop()
            elif not isinstance(layer, nn.Flatten):
                g = self.activation(self.backward_ops[type(layer)], g, saved.pop())
        parts.reverse()
        return logits, torch.cat(parts, dim=1)

    def state_dict(self, weights: torch.Tensor, template: nn.Module) -> dict[str, torch.Tensor]:
        """One fold's flat ``weights`` as a ``state_dict`` that loads into ``template``."""
        tensors = iter(part.view(shape) for part, shape in zip(weights.split(self.sizes), self.shapes,
                                                                strict=True))
        out_first = iter(self.out_first)
        state = {}
        for name, layer in template.named_children():
            if isinstance(layer, nn.Linear):
                weight = next(tensors)
                state[f"{name}.weight"] = (weight if next(out_first) else weight.t()).contiguous().clone()
                state[f"{name}.bias"] = next(tensors).reshape(-1).clone()
        return state


class StackedAdam:
    """k independent Adam (or AdamW) optimizers on the rows of a flat ``(k, n)`` weight tensor.

    Same arithmetic as ``torch.optim.Adam``; each row has its own step count, and a step can leave
    some rows out (a fold with no batch left in this epoch) without touching their weights or moments.
    When every row steps together, torch's own fused kernel does the update (what ``Adam(fused=True)``
    calls: one call instead of seven ops) where this torch has one that runs on the weights' device;
    otherwise the same update is written in public tensor operations.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, weights: torch.Tensor) -> None:
        group = optimizer.param_groups[0]
        self.beta1, self.beta2 = group["betas"]
        self.eps = group["eps"]
        self.weight_decay = group["weight_decay"]
        self.decoupled = isinstance(optimizer, torch.optim.AdamW)
        self.exp_avg = torch.zeros_like(weights)
        self.exp_avg_sq = torch.zeros_like(weights)
        self.steps = [0] * len(weights)
        self.step_tensors: dict[torch.device, torch.Tensor] = {}
        self.fused = self.fused_kernel(weights)

    def fused_kernel(self, weights: torch.Tensor) -> Callable | None:
        """``torch._fused_adam_`` (``_fused_adamw_``), private API, if it exists here and runs on a probe
        like ``weights`` (device and dtype); else None."""
        name = "_fused_adamw_" if self.decoupled else "_fused_adam_"
        kernel = getattr(torch, name, None)
        if kernel is None or not torch.is_floating_point(weights):
            log.info("batched training: torch.%s unavailable; Adam in public tensor operations", name)
            return None
        probe = [torch.ones(1, 2, dtype=weights.dtype, device=weights.device) for _ in range(4)]
        try:
            self.call_fused(kernel, *probe, step=1, lr=1e-3)
        except PRIVATE_API_ERRORS as error:
            log.info("batched training: torch.%s fails here (%s); Adam in public tensor operations", name, error)
            return None
        return kernel

    def call_fused(self, kernel: Callable, weights, grad, exp_avg, exp_avg_sq, step: int, lr: float) -> None:
        # As torch.optim.Adam(fused=True) keeps it: the step count a float32 tensor on the params' device.
        # The kernel only reads it (torch.optim.Adam steps it itself), so one tensor is refilled each step.
        step_tensor = self.step_tensors.get(weights.device)
        if step_tensor is None:
            step_tensor = self.step_tensors[weights.device] = torch.zeros((), device=weights.device)
        step_tensor.fill_(float(step))
        kernel([weights], [grad], [exp_avg], [exp_avg_sq], [], [step_tensor], lr=lr, beta1=self.beta1,
               beta2=self.beta2, weight_decay=self.weight_decay, eps=self.eps, amsgrad=False, maximize=False)

    def keep(self, rows: list[int]) -> None:
        """Drop every row not in ``rows`` (folds that have stopped)."""
        index = torch.tensor(rows, dtype=torch.long, device=self.exp_avg.device)
        self.exp_avg, self.exp_avg_sq = self.exp_avg[index], self.exp_avg_sq[index]
        self.steps = [self.steps[row] for row in rows]

    @torch.no_grad()
    def step(self, weights: torch.Tensor, grad: torch.Tensor, lr: float, active: list[bool] | None) -> None:
        """Update ``weights`` in place; with ``active`` (a bool per row) the other rows stay untouched."""
        if active is None and len(set(self.steps)) == 1 and self.fused is not None:
            self.steps = [n + 1 for n in self.steps]
            self.call_fused(self.fused, weights, grad, self.exp_avg, self.exp_avg_sq, self.steps[0], lr)
            return
        active = active or [True] * len(self.steps)
        frozen = torch.tensor([not a for a in active], device=weights.device)
        saved = weights[frozen], self.exp_avg[frozen], self.exp_avg_sq[frozen]
        self.steps = [n + int(a) for n, a in zip(self.steps, active, strict=True)]
        if self.weight_decay and self.decoupled:
            weights.mul_(1 - lr * self.weight_decay)
        elif self.weight_decay:
            grad = grad.add(weights, alpha=self.weight_decay)
        self.exp_avg.lerp_(grad, 1 - self.beta1)
        self.exp_avg_sq.mul_(self.beta2).addcmul_(grad, grad, value=1 - self.beta2)
        steps = torch.tensor(self.steps, dtype=torch.float64, device=weights.device).clamp(min=1).unsqueeze(1)
        correction1 = (1 / (1 - self.beta1 ** steps)).to(weights)
        correction2_sqrt = (1 - self.beta2 ** steps).sqrt().to(weights)
        denom = (self.exp_avg_sq.sqrt() / correction2_sqrt).add_(self.eps)
        weights.addcdiv_(self.exp_avg * correction1, denom, value=-lr)
        weights[frozen], self.exp_avg[frozen], self.exp_avg_sq[frozen] = saved


def padded_batches(orders: list[torch.Tensor], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Index rows ``(k, steps * batch_size)`` padded with 0, and weights ``1 / len(batch)`` (0 = padding).

    Fold ``i``'s batch ``s`` is ``orders[i][s * batch_size:(s + 1) * batch_size]``, as in ``train_fold``;
    weighting each sample by its batch's size makes a fold's loss the mean over its own batch.
    """
    steps = max(math.ceil(len(order) / batch_size) for order in orders)
    width = steps * batch_size
    device = orders[0].device
    index = torch.zeros(len(orders), width, dtype=torch.long, device=device)
    weight = torch.zeros(len(orders), width, device=device)
    for row, order in enumerate(orders):
        n = len(order)
        index[row, :n] = order
        sizes = torch.full((n,), float(batch_size), device=device)
        if n % batch_size:
            sizes[n - n % batch_size:] = n % batch_size
        weight[row, :n] = 1 / sizes
    return index, weight


def smoothed_targets(y: torch.Tensor, n_classes: int, label_smoothing: float, dtype) -> torch.Tensor:
    """Class probabilities as ``CrossEntropyLoss(label_smoothing=...)`` sees its class-index targets."""
    return F.one_hot(y, n_classes).to(dtype) * (1 - label_smoothing) + label_smoothing / n_classes


def epoch_sample_losses(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each sample's training loss ``(steps, k, batch)`` over an epoch from its steps' logits ``(steps, k, batch,
    classes)``, 0 for padding (``mask`` False): one computation per epoch instead of one per step."""
    return -(targets * log_softmax(logits)).sum(dim=3) * mask


def epoch_train_losses(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each fold's summed training loss over an epoch (:func:`epoch_sample_losses` summed per fold)."""
    return epoch_sample_losses(logits, targets, mask).sum(dim=(0, 2))


def train_folds_batched(
    models: Sequence[nn.Sequential],
    optimizer: torch.optim.Optimizer,
    scheduler,
    loss_fn: ClassificationLoss,
    x: torch.Tensor,
    y: torch.Tensor,
    folds: Sequence[tuple[torch.Tensor, torch.Tensor]],
    batch_size: int,
    max_epochs: int,
    patience: int,
    generators: Sequence[torch.Generator],
    min_delta: float = 0.0,
    hooks: TrainingHooks = NO_HOOKS,
    checkpoint=None,
    dropout_generators: Sequence[torch.Generator] | None = None,
) -> list[FoldResult]:
    """Train fold ``i``'s ``models[i]`` on ``folds[i] = (train_indices, val_indices)``, all at once.

    ``optimizer`` and ``scheduler`` (built for the first fold) give the Adam settings and the epoch-driven
    learning-rate schedule, which is the same for every fold. Each model ends holding its best epoch's
    weights, also returned in its :class:`FoldResult` like ``train_fold`` does. A fold whose loss turns
    NaN or infinite stops there and comes back with ``diverged`` set; the others train to the end.
    ``hooks`` hear of every fold's epochs, and of each fold as it stops (with its best weights loaded); an
    exception they raise propagates. ``checkpoint`` (a dlexp.training.checkpoint.EpochCheckpoint) restores
    the stacked state of an interrupted run before the first epoch (the hooks hear of its epochs and stopped
    folds again) and saves it at the end of epochs. ``dropout_generators[i]`` draws fold ``i``'s dropout
    masks (default: seeded from ``generators[i]``'s seed, dlexp.training.stacked.dropout_generator).

    This is dlexp.training.stacked.train_stacked with one job, so a job trains to the same numbers alone
    and stacked with other jobs of a sweep.
    """
    from dlexp.training.stacked import StackedJob, train_stacked

    job = StackedJob(models, optimizer, scheduler, loss_fn, folds, generators, max_epochs, patience,
                     min_delta=min_delta, hooks=hooks, checkpoint=checkpoint, dropout_generators=dropout_generators)
    (outcome,) = train_stacked([job], x, y, batch_size)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome
