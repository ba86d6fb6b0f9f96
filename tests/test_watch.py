"""The learning watch (paper_alexnet/watch.py) on hand-made step sequences: §5's stall, a net passing through
ln(classes) on its way down, and a blow-up."""

import math

from paper_alexnet import watch
from paper_alexnet.watch import LearningWatch


def _feed(w, steps):
    """Feed (loss, hits, images) steps; the verdicts, with the step each came at."""
    return [(v.kind, v.step) for v in (w.step(*s) for s in steps) if v is not None]


def test_the_deadline_is_the_first_epoch_or_a_tenth_of_the_run_whichever_comes_first():
    assert watch.deadline(steps_per_epoch=12, total_steps=360) == 12  # a folder at batch 128
    assert watch.deadline(steps_per_epoch=63, total_steps=252) == 26  # the built-in run: 10%
    assert watch.deadline(steps_per_epoch=10009, total_steps=900810) == 10009  # ImageNet: one epoch
    # never on fewer steps
    assert watch.deadline(steps_per_epoch=2, total_steps=6) == watch.MIN_STEPS


def test_a_stall_at_ln_classes_with_batches_at_chance_is_told_by_the_deadline():
    # §5's init: the loss a hair from ln(10) every step, one image in ten right (a constant guess)
    for per_epoch, total in ((12, 360), (63, 252), (500, 5000)):
        w = LearningWatch(10, per_epoch, total)
        steps = [(math.log(10) + 0.003 * (-1) ** i, 3 + i % 2, 32) for i in range(200)]
        verdicts = _feed(w, steps)
        assert verdicts == [("stall", w.window)] and w.window <= watch.deadline(per_epoch, total)


def test_a_net_passing_through_ln_classes_while_learning_is_not_a_stall():
    # the quick recipe's start: the loss falls from above ln(10) through it, the batches leave chance
    w = LearningWatch(10, 63, 252)
    steps = [(3.2 - 0.02 * i, min(32, 3 + i // 3), 32) for i in range(120)]
    assert _feed(w, steps) == []
    # at ln(10) for 20 steps, but the batches are well above chance: learning, not the uniform output
    w = LearningWatch(10, 63, 252)
    assert _feed(w, [(math.log(10), 12, 32)] * 40) == []
    # at chance, but the loss moving by more than 2%: not the uniform output either
    w = LearningWatch(10, 63, 252)
    assert _feed(w, [(math.log(10) * (1 + 0.05 * (-1) ** i), 3, 32) for i in range(40)]) == []


def test_a_blow_up_is_told_at_its_step_and_the_chance_that_follows_as_a_stall():
    # the 4-class folder: 2.30 -> 2.22 -> 90.03 -> 62.6, then at chance for good
    w = LearningWatch(4, 40, 400)
    steps = [(2.30, 8, 32), (2.22, 9, 32), (90.03, 8, 32), (62.6, 7, 32)]
    steps += [(math.log(4) + 0.001 * (-1) ** i, 8, 32) for i in range(30)]
    verdicts = _feed(w, steps)
    assert verdicts[0] == ("blow-up", 3) and verdicts[1][0] == "stall" and len(verdicts) == 2
    assert "90.03" in _text(LearningWatch(4, 40, 400), steps[:3])


def test_a_run_still_at_chance_at_the_deadline_after_a_blow_up_is_a_stall_then():
    # §5's recipe on the built-in data (measured): 3.07, 11.9, 23.2, ... then thrashing around ln(10), at chance
    w = LearningWatch(10, 63, 252)  # deadline: step 26
    steps = [
        (3.07, 2, 16),
        (11.85, 4, 16),
        (23.2, 2, 16),
        (27.3, 0, 16),
        (18.4, 1, 16),
        (5.7, 2, 16),
    ]
    # moving: not the uniform output
    steps += [(2.3 + 0.2 * (-1) ** i, 1 + i % 3, 16) for i in range(60)]
    assert _feed(w, steps) == [("blow-up", 3), ("stall", 26)]
    # the same start, but learning by the deadline: no stall
    w = LearningWatch(10, 63, 252)
    learning = steps[:6] + [(2.0 - 0.02 * i, 6 + i // 4, 16) for i in range(60)]
    assert _feed(w, learning) == [("blow-up", 3)]


def test_a_loss_that_starts_high_and_falls_is_not_a_blow_up():
    # He init can start several times ln(classes); only a jump above the start counts
    w = LearningWatch(10, 63, 252)
    assert _feed(w, [(9.0 - 0.05 * i, 3 + i // 10, 32) for i in range(100)]) == []


def _text(w, steps):
    return [v for v in (w.step(*s) for s in steps) if v is not None][0].text
