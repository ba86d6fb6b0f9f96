"""Is the net learning? The two ways a run spends its budget at chance, told within its first steps.

- The stall of §5's init (N(0, 0.01) weights, biases 1): the net outputs the uniform distribution,
  so every step's loss sits at ln(classes) and its batches are right at chance. Caffe's users met it
  on ImageNet (BVLC/caffe#401, #2085); on small data sets it rarely lifts (docs/training.md).
- A blow-up: a learning rate too high for the net and data sends the loss far above where it
  started; the run may recover, or sink to chance, where the stall check then sees it.

Both are told by the end of the first epoch or 10% of the run, whichever comes first: a blow-up when
it happens, and a stall when the loss has sat at ln(classes) for a window of steps, or when the net is
still at chance at that deadline after a blow-up (§5's recipe on small data sets: the loss leaps in the
first steps, thrashes, then settles at ln(classes)). A run passing through ln(classes) on its way down
is not a stall: its loss moves, and it never blew up.
"""

from __future__ import annotations

import dataclasses
import math
from collections import deque
from typing import Optional

WINDOW = 20  # steps judged together at most
MIN_STEPS = 10  # never judged on fewer
LOSS_TOLERANCE = 0.02  # a stalled step's loss is within 2% of ln(classes)
BLOW_UP = 4.0  # a loss this many times the first step's (or ln(classes), if higher) is a blow-up


@dataclasses.dataclass(frozen=True)
class Verdict:
    kind: str  # "stall" or "blow-up"
    step: int  # steps seen when it was found (1-based)
    text: str  # what is happening, in one sentence


def deadline(steps_per_epoch: int, total_steps: int) -> int:
    """The step by which a stall is told: the end of the first epoch or 10% of the run, whichever comes
    first (never before MIN_STEPS)."""
    return max(MIN_STEPS, min(steps_per_epoch, math.ceil(0.1 * total_steps)))


def chance_margin(classes: int, images: int) -> float:
    """Two standard deviations of a guesser's hit (or error) rate over ``images``: how far a rate must be from
    chance to say the net has left it (here, and for optim.PlateauSchedule)."""
    p = 1 / classes
    return 2 * math.sqrt(p * (1 - p) / max(images, 1))


def at_chance(hits: int, images: int, classes: int) -> bool:
    """The batches' top-1 hits are not above a guesser's by chance_margin."""
    return hits / max(images, 1) <= 1 / classes + chance_margin(classes, images)


class LearningWatch:
    """Hears every training step (loss, top-1 hits, images); ``step`` returns a Verdict the first time a
    stall or a blow-up is seen, else None. The stall window is WINDOW steps, shortened to the deadline
    so that the verdict comes by then."""

    def __init__(self, classes: int, steps_per_epoch: int, total_steps: int):
        self.classes, self.chance_loss = classes, math.log(classes)
        self.deadline = deadline(steps_per_epoch, total_steps)
        self.window = min(WINDOW, self.deadline)
        self.recent: deque = deque(maxlen=self.window)
        self.first: Optional[float] = None
        self.steps = 0
        self.blown: Optional[tuple] = None  # (step, loss) of the blow-up
        self.stall: Optional[Verdict] = (
            None  # kept: under data parallelism the run stops a step later
        )

    def step(self, loss: float, hits: int, images: int) -> Optional[Verdict]:
        self.steps += 1
        self.first = loss if self.first is None else self.first
        self.recent.append((loss, hits, images))
        if self.blown is None and loss > BLOW_UP * max(self.first, self.chance_loss):
            self.blown = (self.steps, loss)
            return Verdict(
                "blow-up",
                self.steps,
                f"the loss jumped to {loss:.2f} (it started at {self.first:.2f}): "
                f"the learning rate is too high for this net and data",
            )
        if self.stall is None and len(self.recent) == self.window:
            self.stall = self._stalled()
            return self.stall
        return None

    def _stalled(self) -> Optional[Verdict]:
        hits, images = sum(h for _, h, _ in self.recent), sum(n for _, _, n in self.recent)
        if not at_chance(hits, images, self.classes):
            return None
        right = f"{100 * hits / images:.1f}% right, chance {100 / self.classes:.1f}%"
        if all(
            abs(loss - self.chance_loss) <= LOSS_TOLERANCE * self.chance_loss
            for loss, _, _ in self.recent
        ):
            return Verdict(
                "stall",
                self.steps,
                f"the loss has stayed at ln({self.classes}) = {self.chance_loss:.3f} for the last "
                f"{self.window} steps, and their batches are at chance ({right}): the net outputs the "
                f"uniform distribution",
            )
        if self.steps == self.deadline and self.blown is not None:
            return Verdict(
                "stall",
                self.steps,
                f"the loss blew up at step {self.blown[0]} (to {self.blown[1]:.2f}) and the net is "
                f"still at chance at step {self.steps} ({right} in the last {self.window} steps)",
            )
        return None
