"""Training all k folds at once: the folds' MLPs stacked into one batched model.

A tiny MLP on a few hundred points spends its time in per-call overhead, not arithmetic, so one step
for k stacked folds costs about what one step for one fold does. Each fold still has its own data
order (the same generator as the sequential path), its own Adam state and step count, its own early
stopping and best weights, and its loss is the mean over its own batch. A fold that stops is dropped
from the batch, so nothing touches its weights or metrics again.

Only what stacks exactly is batched (:func:`batching_obstacle` says why not otherwise): Linear,
activation and dropout layers, Adam/AdamW, epoch-driven LR schedules and cross-entropy on class indices.
Dropout draws its masks from torch's global generator as ``nn.Dropout`` does (so a seeded run repeats),
one mask per fold and sample; the draws are not those of one-by-one training, their distribution is.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from dlexp.models.mlp import ACTIVATIONS
from dlexp.training.loop import NO_HOOKS, EarlyStopping, FoldResult, TrainingDiverged, TrainingHooks, check_finite
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

    def __init__(self, models: Sequence[nn.Sequential]) -> None:
        self.layers = list(models[0])
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

    def bind(self, weights: torch.Tensor) -> None:
        """Train ``weights`` (one row per running fold) from now on.

        The per-layer views (and the ``(k, out, in)`` ones the backward pass multiplies by) are made here,
        once per change of the running folds, not once per step: at this size every tensor call is a
        measurable cost.
        """
        self.params = self.views(weights)
        if not self.manual_backward:  # autograd differentiates the views
            self.params = [view.requires_grad_() for view in self.params]
        self.backward_weights = [w if out_first else w.transpose(1, 2)
                                 for w, out_first in zip(self.params[0::2], self.out_first, strict=True)]

    def views(self, weights: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer weight and bias tensors ``(k, *stored shape)`` sharing memory with ``weights``."""
        return [part.view(len(weights), *shape)
                for part, shape in zip(weights.split(self.sizes, dim=1), self.shapes, strict=True)]

    def forward(self, x: torch.Tensor, saved: list[torch.Tensor] | None = None,
                training: bool = False) -> torch.Tensor:
        """Logits ``(k, batch, classes)`` of inputs ``(k, batch, ...)`` with the bound weights.

        ``training`` turns dropout on (a fresh mask per call, scaled by ``1 / (1 - p)`` as ``nn.Dropout``
        does); evaluation leaves it out. With ``saved``, appends each Linear layer's input, each activation's
        output and each dropout mask, which is what the hand-written backward pass needs.
        """
        linear = 0
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                if saved is not None:
                    saved.append(x)
                weight = self.params[2 * linear]
                x = torch.baddbmm(self.params[2 * linear + 1], x,
                                  weight.transpose(1, 2) if self.out_first[linear] else weight)
                linear += 1
            elif isinstance(layer, nn.Flatten):
                x = x.flatten(2)
            elif isinstance(layer, nn.Dropout):
                if training and layer.p > 0:
                    mask = torch.empty_like(x).bernoulli_(1 - layer.p).div_(1 - layer.p)
                    x = x * mask
                    if saved is not None:
                        saved.append(mask)
            else:
                x = ACTIVATION_OPS[type(layer)][0](x) if type(layer) in ACTIVATION_OPS else layer(x)
                if saved is not None:
                    saved.append(x)
        return x

    def logits_and_grad(self, x: torch.Tensor, neg_scaled_target: torch.Tensor,
                        weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``(k, batch, classes)`` and the gradient of the summed fold losses, flat like the weights.

        ``weight`` ``(k, batch, 1)`` is ``1 / batch size`` per sample (0 for padding), so a fold's loss is the
        mean over its own batch; ``neg_scaled_target`` is ``-target * weight``, the targets being class
        probabilities (label smoothing included). The losses themselves are computed once per epoch from
        the logits (:func:`epoch_train_losses`), not per step. ReLU, Tanh and Sigmoid networks get a
        hand-written backward pass (half the calls of autograd's, which is what a step of a tiny model
        costs); other activations go through autograd.
        """
        if not self.manual_backward:
            logits = self.forward(x, training=True)
            loss = (neg_scaled_target * logits.log_softmax(dim=2)).sum()
            grads = torch.autograd.grad(loss, self.params)
            return logits.detach(), torch.cat([g.flatten(1) for g in grads], dim=1)
        saved: list[torch.Tensor] = []
        logits = self.forward(x, saved, training=True)
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
                if layer.p > 0:
                    g = g * saved.pop()
            elif not isinstance(layer, nn.Flatten):
                g = self.backward_ops[type(layer)](g, saved.pop())
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
        step_tensor = torch.tensor(float(step), dtype=torch.float32, device=weights.device)
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


def epoch_train_losses(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each fold's summed training loss over an epoch from its steps' logits ``(steps, k, batch, classes)``:
    one computation per epoch instead of one per step (``mask`` is False for padding)."""
    per_sample = -(targets * log_softmax(logits)).sum(dim=3)
    return (per_sample * mask).sum(dim=(0, 2))


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
) -> list[FoldResult]:
    """Train fold ``i``'s ``models[i]`` on ``folds[i] = (train_indices, val_indices)``, all at once.

    ``optimizer`` and ``scheduler`` (built for the first fold) give the Adam settings and the epoch-driven
    learning-rate schedule, which is the same for every fold. Each model ends holding its best epoch's
    weights, also returned in its :class:`FoldResult` like ``train_fold`` does. A fold whose loss turns
    NaN or infinite stops there and comes back with ``diverged`` set; the others train to the end.
    ``hooks`` hear of every fold's epochs, and of each fold as it stops (with its best weights loaded).
    ``checkpoint`` (a dlexp.training.checkpoint.EpochCheckpoint) restores the stacked state of an interrupted
    run before the first epoch (the hooks hear of its epochs and stopped folds again) and saves it at the end
    of epochs.
    """
    device = x.device
    k = len(models)
    stacked = StackedMLP(models)
    weights = stacked.weights.to(device)
    adam = StackedAdam(optimizer, weights)
    label_smoothing = loss_fn.criterion.label_smoothing
    best_weights = weights.clone()
    results = [FoldResult(fold=i + 1, train_indices=train, val_indices=val,
                          history={"train_loss": [], "val_loss": [], "val_acc": [], "lr": []})
               for i, (train, val) in enumerate(folds)]
    stoppers = [EarlyStopping(patience, min_delta) for _ in range(k)]
    running = list(range(k))  # fold positions still training; row r of `weights` is fold running[r]
    val_index, val_weight = padded_batches([val for _, val in folds], max(len(val) for _, val in folds))
    val_index, val_weight = val_index.to(device), val_weight.to(device)
    stacked.bind(weights)
    n_classes = models[0][-1].out_features
    for result in results:
        hooks.fold_start(result.fold)

    def finish(i: int) -> None:
        """Fold ``i`` has stopped: its best weights into its model and result, then its hook."""
        results[i].state_dict = stacked.state_dict(best_weights[i], models[i])
        models[i].load_state_dict(results[i].state_dict)
        hooks.fold_end(results[i])

    first_epoch = 1
    if checkpoint is not None and (saved := checkpoint.restore()) is not None:
        from dlexp.training.checkpoint import replay_epochs, result_from_state

        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        for generator, state in zip(generators, saved["generators"], strict=True):
            generator.set_state(state)
        torch.set_rng_state(saved["rng"])
        running = list(saved["running"])
        weights, best_weights = saved["weights"].to(device), saved["best_weights"].to(device)
        adam.exp_avg, adam.exp_avg_sq = saved["exp_avg"].to(device), saved["exp_avg_sq"].to(device)
        adam.steps = list(saved["steps"])
        stacked.bind(weights)
        for i, (result, stopper) in enumerate(zip(results, stoppers, strict=True)):
            saved_result = result_from_state(saved["results"][i])
            for key, values in saved_result.history.items():
                result.history[key][:] = values
            for name in ("best_epoch", "best_val_loss", "best_val_acc", "epochs_run", "diverged"):
                setattr(result, name, getattr(saved_result, name))
            vars(stopper).update(saved["stoppers"][i])
            # a diverged fold's last epoch never reached the hooks
            replay_epochs(result, hooks, result.epochs_run - (result.diverged is not None))
        for i, result in enumerate(results):
            if i not in running and result.diverged is None:
                finish(i)
        first_epoch = int(saved["epoch"]) + 1

    def stacked_state() -> dict:
        from dlexp.training.checkpoint import result_state

        return {"optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "generators": [g.get_state() for g in generators], "rng": torch.get_rng_state(),
                "running": list(running), "weights": weights, "best_weights": best_weights,
                "exp_avg": adam.exp_avg, "exp_avg_sq": adam.exp_avg_sq, "steps": list(adam.steps),
                "results": [result_state(r) for r in results], "stoppers": [dict(vars(s)) for s in stoppers]}

    for epoch in range(first_epoch, max_epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        orders = [folds[i][0][torch.randperm(len(folds[i][0]), generator=generators[i]).to(device)]
                  for i in running]
        index, weight = padded_batches(orders, batch_size)
        n_steps = index.shape[1] // batch_size
        # Step-major copies, so each step's batch of every fold is one contiguous slice.
        x_steps, y_steps, w_steps = (t.view(len(running), n_steps, batch_size, *t.shape[2:]).transpose(0, 1)
                                     .contiguous() for t in (x[index], y[index], weight))
        targets = smoothed_targets(y_steps, n_classes, label_smoothing, x.dtype)
        weight_steps = w_steps.unsqueeze(3)
        neg_scaled_targets = -targets * weight_steps
        # Which folds have a batch at each step: with unequal train sizes the last step may miss some.
        has_batch = (w_steps[:, :, 0] > 0).tolist()
        step_logits = []
        for step in range(n_steps):
            logits, grad = stacked.logits_and_grad(x_steps[step], neg_scaled_targets[step], weight_steps[step])
            adam.step(weights, grad, lr, None if all(has_batch[step]) else has_batch[step])
            step_logits.append(logits)
        train_total = epoch_train_losses(torch.stack(step_logits), targets, w_steps > 0)

        with torch.no_grad():
            rows = val_index[running]
            row_weight = val_weight[running]
            logits = stacked.forward(x[rows])
            losses = F.cross_entropy(logits.flatten(0, 1), y[rows].flatten(), reduction="none",
                                     label_smoothing=label_smoothing).view_as(row_weight)
            val_loss = (losses * row_weight).sum(dim=1)
            val_acc = ((logits.argmax(dim=2) == y[rows]) * row_weight).sum(dim=1)
            n_train = torch.tensor([len(folds[i][0]) for i in running], device=device)
            epoch_metrics = torch.stack([train_total / n_train, val_loss, val_acc]).tolist()

        still_running = []
        for row, i in enumerate(running):
            result, stopper = results[i], stoppers[i]
            metrics = {"train_loss": epoch_metrics[0][row], "val_loss": epoch_metrics[1][row],
                       "val_acc": epoch_metrics[2][row], "lr": lr}
            for key, value in metrics.items():
                result.history[key].append(value)
            result.epochs_run = epoch
            try:
                check_finite(result, epoch)
            except TrainingDiverged as error:
                result.diverged = error  # dropped like a stopped fold; the others train on
                continue
            hooks.epoch_end(result.fold, epoch, metrics)
            if stopper.step(metrics["val_loss"], epoch):
                result.best_epoch, result.best_val_loss, result.best_val_acc = (
                    epoch, metrics["val_loss"], metrics["val_acc"])
                best_weights[i] = weights[row]
            if not stopper.should_stop:
                still_running.append(row)
        for row, i in enumerate(running):
            if row not in still_running and results[i].diverged is None:
                finish(i)
        if len(still_running) < len(running):
            weights = weights[torch.tensor(still_running, dtype=torch.long, device=device)]
            adam.keep(still_running)
            stacked.bind(weights)
            running = [running[row] for row in still_running]
        if not running:
            break
        if scheduler is not None:
            with warnings.catch_warnings():  # the optimizer's step is StackedAdam's, which torch cannot see
                warnings.filterwarnings("ignore", SCHEDULER_ORDER_WARNING, UserWarning)
                scheduler.step()
        if checkpoint is not None:
            checkpoint.epoch_end(epoch, stacked_state)

    for i in running:  # reached max_epochs
        finish(i)
    for i, result in enumerate(results):  # diverged folds keep their best weights too
        if result.diverged is not None:
            result.state_dict = stacked.state_dict(best_weights[i], models[i])
            models[i].load_state_dict(result.state_dict)
    return results
