"""§5: the update rule written out here, step by step, against PaperSGD; the plateau schedule;
top-k error (§6) on hand-made scores."""

import math

import pytest
import torch

from paper_alexnet.metrics import topk_errors
from paper_alexnet.optim import EpochSchedule, PaperSGD, PlateauSchedule


def _paper_rule(w, v, grad, eps, momentum=0.9, decay=0.0005):
    """§5: v <- 0.9 v - 0.0005 eps w - eps grad; w <- w + v."""
    v = momentum * v - decay * eps * w - eps * grad
    return w + v, v


def _loss(w):
    return (
        (w - torch.arange(4.0)) ** 2 * torch.tensor([1.0, 2.0, 3.0, 4.0])
    ).sum() + 0.1 * torch.sin(w).sum()


def test_paper_sgd_is_the_written_rule_step_by_step():
    torch.manual_seed(0)
    start = torch.randn(4, dtype=torch.float64)
    w = start.clone().requires_grad_(True)
    optimizer = PaperSGD([w], lr=0.01)
    ref_w, ref_v = start.clone(), torch.zeros(4, dtype=torch.float64)
    for step in range(30):
        if step == 15:
            for group in optimizer.param_groups:
                group["lr"] = 0.001
        eps = 0.01 if step < 15 else 0.001
        w.grad = None
        _loss(w).backward()
        optimizer.step()
        grad = torch.autograd.functional.jacobian(_loss, ref_w)
        ref_w, ref_v = _paper_rule(ref_w, ref_v, grad, eps)
        assert torch.allclose(w.detach(), ref_w, atol=1e-12, rtol=0), step


def test_paper_sgd_differs_from_torch_sgd_right_after_a_drop():
    torch.manual_seed(1)
    start = torch.randn(4, dtype=torch.float64)
    a, b = start.clone().requires_grad_(True), start.clone().requires_grad_(True)
    ours = PaperSGD([a], lr=0.01)
    theirs = torch.optim.SGD([b], lr=0.01, momentum=0.9, weight_decay=0.0005)
    for step in range(12):
        if step == 10:
            for opt in (ours, theirs):
                opt.param_groups[0]["lr"] = 0.001
        for w, opt in ((a, ours), (b, theirs)):
            w.grad = None
            _loss(w).backward()
            opt.step()
        if step < 10:  # constant eps: the same trajectory (torch's v is ours divided by -eps)
            assert torch.allclose(a, b, atol=1e-10), step
        else:
            assert not torch.allclose(a, b, atol=1e-6), step


def test_plateau_schedule_divides_by_ten_at_most_three_times():
    w = torch.zeros(1, requires_grad=True)
    optimizer = PaperSGD([w], lr=0.01)
    schedule = PlateauSchedule(optimizer, patience=1)
    errors = [0.9, 0.8, 0.8, 0.7, 0.75, 0.7, 0.7, 0.7, 0.7, 0.7]
    drops = [schedule.step(e) for e in errors]
    assert drops == [False, False, True, False, True, True, False, False, False, False]
    assert math.isclose(optimizer.param_groups[0]["lr"], 0.01 / 1000)
    fresh = PlateauSchedule(PaperSGD([torch.zeros(1, requires_grad=True)], lr=0.01))
    fresh.load_state_dict(schedule.state_dict())
    assert fresh.drops == 3 and fresh.best == 0.7
    patient = PlateauSchedule(PaperSGD([torch.zeros(1, requires_grad=True)], lr=0.01), patience=2)
    assert [patient.step(e) for e in (0.5, 0.6, 0.6, 0.6)] == [False, False, True, False]


def test_epoch_schedules():
    opt = PaperSGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    step = EpochSchedule(opt, "step", epochs=10, step_size=3)
    seen = []
    for _ in range(7):
        step.step()
        seen.append(round(opt.param_groups[0]["lr"], 6))
    assert seen == [1, 1, 0.1, 0.1, 0.1, 0.01, 0.01]  # ÷10 after epochs 3 and 6
    opt = PaperSGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    cosine = EpochSchedule(opt, "cosine", epochs=4)
    values = []
    for _ in range(4):
        cosine.step()
        values.append(opt.param_groups[0]["lr"])
    assert values == pytest.approx([0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(1, 5)])


def test_topk_error_on_hand_made_scores():
    # label 2: 5th highest, top-5 hit
    scores = torch.tensor(
        [
            [0.1, 0.5, 0.2, 0.0, 0.0, 0.0, 0.3],  # label 1: top-1 hit
            [0.9, 0.1, 0.2, 0.3, 0.4, 0.5, 0.0],  # label 6: lowest, miss in top-5
            [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        ]
    )
    errors = topk_errors(scores, torch.tensor([1, 6, 2]))
    assert errors[1] == pytest.approx(2 / 3) and errors[5] == pytest.approx(1 / 3)
    # k capped at 2 classes
    assert topk_errors(torch.tensor([[0.2, 0.8]]), torch.tensor([0]))[5] == 0.0


def test_plateau_never_divides_while_the_error_is_at_chance():
    """§5 divides when the validation error "stopped improving": an error still at chance never started."""
    weight = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([weight], lr=0.01)
    schedule = PlateauSchedule(optimizer, patience=1, chance=0.9, margin=0.04)
    for error in (0.9, 0.91, 0.9, 0.87, 0.92, 0.9):  # a stall, with noise: no cut
        assert not schedule.step(error)
    assert optimizer.param_groups[0]["lr"] == 0.01
    # left chance, then stopped improving: cut
    assert not schedule.step(0.5) and schedule.step(0.55)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.001)
    # without a chance level: as before
    plain = PlateauSchedule(torch.optim.SGD([weight], lr=0.01), patience=1)
    assert not plain.step(0.9) and plain.step(0.91)
