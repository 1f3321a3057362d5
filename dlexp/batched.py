"""Training all k folds at once: the folds' MLPs stacked into one batched model.

A tiny MLP on a few hundred points spends its time in per-call overhead, not arithmetic, so one step
for k stacked folds costs about what one step for one fold does. Each fold still has its own data
order (the same generator as the sequential path), its own Adam state and step count, its own early
stopping and best weights, and its loss is the mean over its own batch. A fold that stops is dropped
from the batch, so nothing touches its weights or metrics again.

Only what stacks exactly is batched (:func:`batching_obstacle` says why not otherwise): Linear and
activation layers, Adam/AdamW, epoch-driven LR schedules and cross-entropy on class indices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from dlexp.losses import ClassificationLoss
from dlexp.models.mlp import ACTIVATIONS
from dlexp.training import EarlyStopping, FoldResult, TrainingDiverged, check_finite

ELEMENTWISE_LAYERS = (nn.Flatten, *ACTIVATIONS.values())
#: Activations whose derivative follows from their output: these networks get a hand-written backward.
DERIVATIVES = {
    nn.ReLU: lambda out: out > 0,
    nn.Tanh: lambda out: 1 - out * out,
    nn.Sigmoid: lambda out: out * (1 - out),
}
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


class StackedMLP:
    """k MLPs of one architecture as one flat ``(k, n_params)`` weight tensor and a batched forward.

    A Linear layer is stored as its transposed weight ``(in, out)`` followed by its bias, so the forward
    is one ``baddbmm`` per layer over inputs of shape ``(k, batch, in)``.
    """

    def __init__(self, models: Sequence[nn.Sequential]) -> None:
        self.layers = list(models[0])
        self.shapes: list[tuple[int, ...]] = []
        rows = []
        for model in models:
            parts = []
            for layer in model:
                if isinstance(layer, nn.Linear):
                    parts += [layer.weight.detach().t().reshape(-1), layer.bias.detach()]
            rows.append(torch.cat(parts))
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                self.shapes += [(layer.in_features, layer.out_features), (1, layer.out_features)]
        self.sizes = [math.prod(shape) for shape in self.shapes]
        self.weights = torch.stack(rows)
        self.manual_backward = all(type(layer) in DERIVATIVES for layer in self.layers
                                   if not isinstance(layer, nn.Linear | nn.Flatten))

    def parameters(self, weights: torch.Tensor) -> list[torch.Tensor]:
        """The per-layer views of ``weights`` that training differentiates (autograd leaves if it is used)."""
        views = self.views(weights)
        return views if self.manual_backward else [view.requires_grad_() for view in views]

    def views(self, weights: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer tensors ``(k, in, out)`` and ``(k, 1, out)`` sharing memory with ``weights``."""
        return [part.view(len(weights), *shape)
                for part, shape in zip(weights.split(self.sizes, dim=1), self.shapes, strict=True)]

    def forward(self, params: list[torch.Tensor], x: torch.Tensor,
                saved: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Logits ``(k, batch, classes)`` of inputs ``(k, batch, ...)``.

        With ``saved``, appends each Linear layer's input and each activation's output, which is what the
        hand-written backward pass needs.
        """
        position = 0
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                if saved is not None:
                    saved.append(x)
                x = torch.baddbmm(params[position + 1], x, params[position])
                position += 2
            elif isinstance(layer, nn.Flatten):
                x = x.flatten(2)
            else:
                x = layer(x)
                if saved is not None:
                    saved.append(x)
        return x

    def loss_and_grad(self, weights: torch.Tensor, params: list[torch.Tensor], x: torch.Tensor,
                      target: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-fold losses ``(k,)`` and their gradient, flat like ``weights``.

        ``target`` holds class probabilities ``(k, batch, classes)`` (label smoothing included), ``weight``
        is ``1 / batch size`` per sample (0 for padding), so a fold's loss is the mean over its own batch.
        ReLU, Tanh and Sigmoid networks get a hand-written backward pass (half the calls of autograd's,
        which is what a step of a tiny model costs); other activations go through autograd.
        """
        if not self.manual_backward:
            log_p = self.forward(params, x).log_softmax(dim=2)
            fold_losses = -((target * log_p).sum(dim=2) * weight).sum(dim=1)
            grads = torch.autograd.grad(fold_losses.sum(), params)
            return fold_losses.detach(), torch.cat([g.flatten(1) for g in grads], dim=1)
        saved: list[torch.Tensor] = []
        log_p = self.forward(params, x, saved).log_softmax(dim=2)
        position = len(params)
        fold_losses = -((target * log_p).sum(dim=2) * weight).sum(dim=1)
        grad = torch.empty_like(weights)
        grads = self.views(grad)
        g = (log_p.exp() - target) * weight.unsqueeze(2)  # d(sum of fold losses) / d(logits)
        for layer in reversed(self.layers):
            if isinstance(layer, nn.Linear):
                position -= 2
                torch.bmm(saved.pop().transpose(1, 2), g, out=grads[position])
                torch.sum(g, dim=1, keepdim=True, out=grads[position + 1])
                if position:
                    g = torch.bmm(g, params[position].transpose(1, 2))
            elif not isinstance(layer, nn.Flatten):
                g = g * DERIVATIVES[type(layer)](saved.pop())
        return fold_losses, grad

    def state_dict(self, weights: torch.Tensor, template: nn.Module) -> dict[str, torch.Tensor]:
        """One fold's flat ``weights`` as a ``state_dict`` that loads into ``template``."""
        tensors = iter(part.view(shape) for part, shape in zip(weights.split(self.sizes), self.shapes,
                                                                strict=True))
        state = {}
        for name, layer in template.named_children():
            if isinstance(layer, nn.Linear):
                state[f"{name}.weight"] = next(tensors).t().contiguous()
                state[f"{name}.bias"] = next(tensors).reshape(-1).clone()
        return state


class StackedAdam:
    """k independent Adam (or AdamW) optimizers on the rows of a flat ``(k, n)`` weight tensor.

    Same arithmetic as ``torch.optim.Adam``; each row has its own step count, and a step can leave
    some rows out (a fold with no batch left in this epoch) without touching their weights or moments.
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

    def keep(self, rows: list[int]) -> None:
        """Drop every row not in ``rows`` (folds that have stopped)."""
        index = torch.tensor(rows, dtype=torch.long, device=self.exp_avg.device)
        self.exp_avg, self.exp_avg_sq = self.exp_avg[index], self.exp_avg_sq[index]
        self.steps = [self.steps[row] for row in rows]

    @torch.no_grad()
    def step(self, weights: torch.Tensor, grad: torch.Tensor, lr: float, active: list[bool] | None) -> None:
        """Update ``weights`` in place; with ``active`` (a bool per row) the other rows stay untouched."""
        if active is None and len(set(self.steps)) == 1:
            self.steps = [n + 1 for n in self.steps]
            # torch's own fused CPU kernel (what Adam(fused=True) calls): one call instead of seven ops.
            fused = torch._fused_adamw_ if self.decoupled else torch._fused_adam_
            fused([weights], [grad], [self.exp_avg], [self.exp_avg_sq], [],
                  [torch.tensor(float(self.steps[0]))], lr=lr, beta1=self.beta1, beta2=self.beta2,
                  weight_decay=self.weight_decay, eps=self.eps, amsgrad=False, maximize=False)
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
) -> list[FoldResult]:
    """Train fold ``i``'s ``models[i]`` on ``folds[i] = (train_indices, val_indices)``, all at once.

    ``optimizer`` and ``scheduler`` (built for the first fold) give the Adam settings and the epoch-driven
    learning-rate schedule, which is the same for every fold. Each model ends holding its best epoch's
    weights, also returned in its :class:`FoldResult` like ``train_fold`` does. A fold whose loss turns
    NaN or infinite stops there and comes back with ``diverged`` set; the others train to the end.
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
    params = stacked.parameters(weights)
    n_classes = models[0][-1].out_features

    for epoch in range(1, max_epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        orders = [folds[i][0][torch.randperm(len(folds[i][0]), generator=generators[i]).to(device)]
                  for i in running]
        index, weight = padded_batches(orders, batch_size)
        n_steps = index.shape[1] // batch_size
        # Step-major copies, so each step's batch of every fold is one contiguous slice.
        x_steps, y_steps, w_steps = (t.view(len(running), n_steps, batch_size, *t.shape[2:]).transpose(0, 1)
                                     .contiguous() for t in (x[index], y[index], weight))
        targets = smoothed_targets(y_steps, n_classes, label_smoothing, x.dtype)
        # Which folds have a batch at each step: with unequal train sizes the last step may miss some.
        has_batch = (w_steps[:, :, 0] > 0).tolist()
        step_losses = []
        for step in range(n_steps):
            fold_losses, grad = stacked.loss_and_grad(weights, params, x_steps[step], targets[step],
                                                      w_steps[step])
            adam.step(weights, grad, lr, None if all(has_batch[step]) else has_batch[step])
            step_losses.append(fold_losses)
        train_total = (torch.stack(step_losses) * (w_steps > 0).sum(dim=2)).sum(dim=0)

        with torch.no_grad():
            rows = val_index[running]
            row_weight = val_weight[running]
            logits = stacked.forward(params, x[rows])
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
            if stopper.step(metrics["val_loss"], epoch):
                result.best_epoch, result.best_val_loss, result.best_val_acc = (
                    epoch, metrics["val_loss"], metrics["val_acc"])
                best_weights[i] = weights[row]
            if not stopper.should_stop:
                still_running.append(row)
        if len(still_running) < len(running):
            weights = weights[torch.tensor(still_running, dtype=torch.long, device=device)]
            adam.keep(still_running)
            params = stacked.parameters(weights)
            running = [running[row] for row in still_running]
        if not running:
            break
        if scheduler is not None:
            optimizer._opt_called = True  # its step is ours: silences torch's "scheduler before optimizer"
            scheduler.step()

    for i, (result, model) in enumerate(zip(results, models, strict=True)):
        result.state_dict = stacked.state_dict(best_weights[i], model)
        model.load_state_dict(result.state_dict)
    return results
