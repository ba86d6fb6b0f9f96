"""What a training run says about how it learns (watch.py's verdicts), and whether a stall ends it
(``--on-stall``): a warning for a blow-up or for a stall it goes on through, and the line that ends a
stalled run, each with the command that avoids it.
"""

from __future__ import annotations

import os
from typing import Optional

from paper_alexnet.cli import command_line
from paper_alexnet.watch import LearningWatch
from reproduce.training.run_config import RunConfig


def papers_init(config: RunConfig, alexnet: bool) -> bool:
    """An AlexNet started with §5's init (or the 2012 code's, alike), the one that stalls on small data sets."""
    return config.recipe in ("paper", "code-2012") and alexnet and not config.pretrained


def avoiding_command(config: RunConfig, alexnet: bool) -> str:
    """The command that avoids the stall this run met: the user's own, with the recipe (or, for a run that
    does not start from §5's init, the learning rate) changed, into a new --out."""
    if papers_init(config, alexnet):
        change, suffix, dropped = ["--recipe", "quick"], "quick", ("--recipe", "--lr")
    else:  # the same recipe, a lower rate
        change, suffix, dropped = ["--lr", f"{config.lr / 10:g}"], "lower-lr", ("--lr",)
    dropped += ("--out", "--resume", "--on-stall")
    return command_line(
        "reproduce.train",
        config.command,
        drop=dropped,
        add=[*change, "--out", f"{config.out.rstrip(os.sep)}-{suffix}"],
    )


class RunWatch:
    """Hears every step; ``step`` returns the warning to print, if any; ``stopping`` is true once a stall
    that ``--on-stall stop`` ends has been seen."""

    def __init__(self, config: RunConfig, alexnet: bool, classes: int, steps_per_epoch: int):
        self.config, self.alexnet = config, alexnet
        self.watch = LearningWatch(classes, steps_per_epoch, steps_per_epoch * config.epochs)

    @property
    def stopping(self) -> bool:
        return self.config.on_stall == "stop" and self.watch.stall is not None

    def step(self, loss: float, hits: int, images: int) -> Optional[str]:
        verdict = self.watch.step(loss, hits, images)
        if verdict is None or self.stopping:
            return None
        avoid = avoiding_command(self.config, self.alexnet)
        if verdict.kind == "blow-up":
            return (
                f"warning: at step {verdict.step}: {verdict.text}. It may recover, or sink to chance. "
                f"Avoid it with: {avoid}"
            )
        return (
            f"warning: at step {verdict.step}: {verdict.text}. Going on (--on-stall warn); "
            f"what avoids it: {avoid}"
        )

    def stopped(self) -> str:
        """The line that ends a stalled run."""
        why = (
            "§5's init stalls like this on small data sets (BVLC/caffe#401, docs/training.md)"
            if papers_init(self.config, self.alexnet)
            else "the learning rate is too high or too low here"
        )
        return (
            f"stopped at step {self.watch.stall.step} of the run: {self.watch.stall.text}; {why}. "
            f"Run instead: {avoiding_command(self.config, self.alexnet)}   (this run's checkpoint is in "
            f"{self.config.out}; to go on watching it: the same command with --resume --on-stall warn)"
        )
