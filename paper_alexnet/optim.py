"""§5: the paper's update rule as an optimiser, and its learning-rate schedule.

The paper (§5) writes the update with the learning rate *inside* the velocity:

    v <- 0.9 v - 0.0005 eps w - eps dL/dw
    w <- w + v

``torch.optim.SGD`` keeps it outside (v <- 0.9 v + g + wd w; w <- w - lr v).
The two agree while eps is constant and part right after a learning-rate drop:
here the old velocity keeps its old size; in torch's it is suddenly scaled by
the new, smaller rate.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch

from . import code2012, paper


class PaperSGD(torch.optim.Optimizer):
    """§5: v <- momentum v - weight_decay lr w - lr grad; w <- w + v (the learning rate is per group)."""

    def __init__(
        self,
        params,
        lr: float = paper.LEARNING_RATE,
        momentum: float = paper.MOMENTUM,
        weight_decay: float = paper.WEIGHT_DECAY,
    ):
        if lr <= 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(
                f"lr must be > 0 and momentum, weight_decay >= 0 (got {lr}, {momentum}, {weight_decay})"
            )
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            weights = [w for w in group["params"] if w.grad is not None]
            for w in weights:
                if "velocity" not in self.state[w]:
                    self.state[w]["velocity"] = torch.zeros_like(w)
            if not weights:
                continue
            velocities = [self.state[w]["velocity"] for w in weights]
            # The same four lines as the docstring's rule, applied to all tensors of the group at once.
            torch._foreach_mul_(velocities, momentum)
            torch._foreach_add_(velocities, weights, alpha=-decay * lr)
            torch._foreach_add_(velocities, [w.grad for w in weights], alpha=-lr)
            torch._foreach_add_(weights, velocities)
        return loss


class PlateauSchedule:
    """§5: divide the learning rate by ``factor`` when the validation error stops improving, at most
    ``max_drops`` times. "Stops improving": no new best (by more than ``threshold``, absolute) for
    ``patience`` epochs in a row. An error that has never left chance (``chance``: at or above it, less
    ``margin``) never started improving, so it is no reason to divide: a slow start is not made a stall."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        factor: float = paper.LR_DROP_FACTOR,
        max_drops: int = paper.LR_DROPS,
        patience: int = 1,
        threshold: float = 0.0,
        chance: Optional[float] = None,
        margin: float = 0.0,
    ):
        self.optimizer, self.factor, self.max_drops = optimizer, factor, max_drops
        self.patience, self.threshold, self.chance, self.margin = (
            patience,
            threshold,
            chance,
            margin,
        )
        self.best: Optional[float] = None
        self.bad_epochs = self.drops = 0

    def left_chance(self) -> bool:
        return self.chance is None or (
            self.best is not None and self.best < self.chance - self.margin
        )

    def step(self, val_error: float) -> bool:
        """Record one epoch's validation error; True when the rate was just divided."""
        if self.best is None or val_error < self.best - self.threshold:
            self.best, self.bad_epochs = val_error, 0
            return False
        if not self.left_chance():
            return False
        self.bad_epochs += 1
        if self.bad_epochs < self.patience or self.drops >= self.max_drops:
            return False
        for group in self.optimizer.param_groups:
            group["lr"] /= self.factor
        self.drops, self.bad_epochs = self.drops + 1, 0
        return True

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "drops": self.drops}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs, self.drops = state["best"], state["bad_epochs"], state["drops"]


class EpochSchedule:
    """Learning rate as a function of the epoch: ``step`` (÷factor every ``step_size`` epochs),
    ``cosine`` (to zero over ``epochs``) or ``none``; same interface as :class:`PlateauSchedule`."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        kind: str,
        epochs: int,
        step_size: int = 30,
        factor: float = paper.LR_DROP_FACTOR,
    ):
        if kind not in ("step", "cosine", "none"):
            raise ValueError(f"unknown schedule {kind!r}")
        self.optimizer, self.kind, self.epochs, self.step_size, self.factor = (
            optimizer,
            kind,
            epochs,
            step_size,
            factor,
        )
        self.base = [group["lr"] for group in optimizer.param_groups]
        self.epoch = 0

    def _scale(self, epoch: int) -> float:
        if self.kind == "step":
            return self.factor ** -(epoch // self.step_size)
        if self.kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(epoch, self.epochs) / max(1, self.epochs)))
        return 1.0

    def step(self, val_error: float = 0.0) -> bool:
        before = self.optimizer.param_groups[0]["lr"]
        self.epoch += 1
        for group, base in zip(self.optimizer.param_groups, self.base):
            group["lr"] = base * self._scale(self.epoch)
        return self.optimizer.param_groups[0]["lr"] < before and self.kind == "step"

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "base": self.base}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.base = state["epoch"], list(state["base"])


class HandSchedule:
    """The 2012 run's learning rates, set by hand at its epochs (code2012.SCHEDULE, from layer-params-145.cfg's
    log), the epochs scaled from its 91 to ``epochs``: after epoch round(N * epochs / 91) each named group's
    rate becomes R / 0.01 of what it started at. The groups are parameter_groups' (the biases of conv2..fc8 are
    never lowered, as in that run). PCA lighting is on until COLOUR_NOISE_OFF, scaled alike (``lighting``).
    Same interface as :class:`PlateauSchedule`."""

    def __init__(self, optimizer: torch.optim.Optimizer, epochs: int):
        self.optimizer, self.epochs, self.epoch = optimizer, epochs, 0
        self.start = [group["lr"] for group in optimizer.param_groups]

    def at(self, epoch: int) -> int:
        """The epoch of this run that the 2012 run's epoch ``epoch`` (of 91) falls on."""
        return max(1, round(epoch * self.epochs / code2012.EPOCHS))

    def lighting(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` (1-based) trains with PCA lighting."""
        return epoch <= self.at(code2012.COLOUR_NOISE_OFF)

    def step(self, val_error: float = 0.0) -> bool:
        self.epoch += 1
        dropped = False
        for when, names, rate in code2012.SCHEDULE:
            if self.at(when) != self.epoch:
                continue
            for group, start in zip(self.optimizer.param_groups, self.start):
                if group.get("name") in names:
                    group["lr"] = start * rate / code2012.LEARNING_RATE
                    dropped = True
        return dropped

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "start": self.start}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.start = state["epoch"], list(state["start"])


def parameter_groups(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float,
    bias_lr: float = 1.0,
    bias_wd: float = 1.0,
    own: Sequence[str] = (),
) -> List[Dict]:
    """The trainable parameters of ``model`` as optimiser groups: "weights" at ``lr`` and ``weight_decay``,
    "biases" at ``bias_lr`` times them and ``bias_wd`` times the decay (the 2012 code: 2 and 0); and a
    "LAYER.weight" and "LAYER.bias" group of their own for each layer named in ``own`` (HandSchedule's conv1).
    §5's one rule for all (both factors 1, no ``own``) is one group, "all". Empty groups are left out."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    split = bias_lr != 1.0 or bias_wd != 1.0 or own
    if not split:
        return [{"name": "all", "params": [p for _, p in named]}]
    groups: Dict[str, List] = {"weights": [], "biases": []}
    for name, weight in named:
        parts = name.split(".")
        layer, kind = (parts[-2] if len(parts) > 1 else ""), parts[-1]
        key = f"{layer}.{kind}" if layer in own else ("biases" if kind == "bias" else "weights")
        groups.setdefault(key, []).append(weight)
    out = []
    for key, params in groups.items():
        if params:
            bias = key == "biases" or key.endswith(".bias")
            out.append(
                {
                    "name": key,
                    "params": params,
                    "lr": lr * (bias_lr if bias else 1.0),
                    "weight_decay": weight_decay * (bias_wd if bias else 1.0),
                }
            )
    return out


def build_optimizer(
    name: str, params, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    """``sgd`` is the paper's rule (:class:`PaperSGD`); ``adam`` / ``adamw`` as the user's recipes used. ``params``:
    tensors, or groups (parameter_groups) whose own rate and decay win over ``lr`` and ``weight_decay``."""
    if name == "sgd":
        return PaperSGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name in ("adam", "adamw"):
        params = list(params)
        tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
        # The fused kernels are ~6x faster than the default on a CPU (60M parameters: 55 vs 340 ms a step).
        kinds = {p.device.type for p in tensors}
        fused = (
            len(kinds) == 1
            and kinds <= {"cpu", "cuda"}
            and all(p.is_floating_point() for p in tensors)
        )
        kind = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return kind(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    raise ValueError(f"unknown optimiser {name!r}: sgd, adam or adamw")


def build_schedule(
    name: str,
    optimizer,
    epochs: int,
    patience: int = 1,
    step_size: int = 30,
    chance: Optional[float] = None,
    margin: float = 0.0,
):
    """The schedule by name; ``plateau`` divides only once the validation error has left ``chance``;
    ``code-2012`` is the 2012 run's (HandSchedule)."""
    if name == "code-2012":
        return HandSchedule(optimizer, epochs)
    if name == "plateau":
        return PlateauSchedule(optimizer, patience=patience, chance=chance, margin=margin)
    return EpochSchedule(optimizer, name, epochs, step_size=step_size)
