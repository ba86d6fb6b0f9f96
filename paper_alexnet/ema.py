"""An exponential moving average of the weights (``--ema DECAY``): not the paper's (docs/deviations.md).

After every optimiser step, each averaged weight e becomes ``decay * e + (1 - decay) * w``, w the weight
just stepped; buffers (batch norm's running statistics in the comparison nets) are copied. The average is
what a run validates, keeps as best.pt and scores; the stepped weights continue the training (and a
checkpoint holds both, so that a resumed run averages as an uninterrupted one). The average starts at the
initial weights; with decay d it forgets a step's weights after about 1 / (1 - d) steps.
"""

from __future__ import annotations

import torch


class WeightAverage:
    """``average``: a second net of the same build (devices, layout), which holds the average."""

    def __init__(self, model: torch.nn.Module, average: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"--ema {decay:g}: the decay must be between 0 and 1")
        self.decay = decay
        self.source = model
        self.model = average
        self.model.load_state_dict(model.state_dict())  # in place: the pairs below stay valid
        self.model.requires_grad_(False)
        mine = dict(self.model.named_parameters())
        self._averaged = [mine[name] for name, _ in model.named_parameters()]
        self._stepped = [p for _, p in model.named_parameters()]

    @torch.no_grad()
    def update(self) -> None:
        stepped = [p.detach() for p in self._stepped]
        torch._foreach_lerp_(self._averaged, stepped, 1 - self.decay)
        for mine, theirs in zip(self.model.buffers(), self.source.buffers()):
            mine.copy_(theirs)
