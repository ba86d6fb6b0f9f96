"""What the commands compute, held through reworks of the command layer: a train run and a small ablation
grid, with fixed seeds and explicit flags (not the defaults, which may change on their own), against the
numbers recorded in tests/fixtures/behaviour.json.

Every column is compared but the timings. The tolerances hold across CPU kinds: AVX2 and AVX-512 kernels
sum in other orders, which moves a loss in its last digits and may flip one image's prediction, so a loss
is compared to 1e-3 of itself, an error to one validation image (two in a difference of errors), and
everything else exactly. The flags keep the trajectory smooth (He init, SGD at 0.0001 on unit-std pixels:
no loss leaps).

After a change that is meant to move these numbers, record them again and say why in the commit:

    python tests/test_behaviour.py --record
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile

import pandas as pd
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "fixtures", "behaviour.json")
VAL_IMAGES = 8
COMMON = [
    "--data",
    f"synthetic?classes=4&train=24&val={VAL_IMAGES}",
    "--epochs",
    "2",
    "-b",
    "8",
    "--workers",
    "0",
    "--quiet",
    "--recipe",
    "quick",
    "--optimizer",
    "sgd",
    "--lr",
    "0.0001",
    "--schedule",
    "none",
    # the small-data tools off, whatever the recipe's (they came after the recording)
    "--crop-scale",
    "0",
    "--jitter",
    "0",
    "--label-smoothing",
    "0",
    "--mixup",
    "0",
    "--cutmix",
    "0",
    "--ema",
    "0",
]
TRAIN = COMMON + ["--seed", "3", "--variant", "paper", "--on-stall", "warn", "--ten-crop"]
GRID = COMMON + ["--variants", "paper,paper+no-lrn@momentum=0.5", "--seeds", "0", "--no-ten-crop"]
TIMING = {
    "images_per_s",
    "seconds",
    "data_wait_s",
    "seconds_to_25",
    "wall_seconds",
    "images_per_s_mean",
    "seconds_to_25_mean",
}


def _table(path):
    frame = pd.read_csv(path, keep_default_na=False)
    return [{k: v for k, v in row.items() if k not in TIMING} for row in frame.to_dict("records")]


def measure(folder: str) -> dict:
    """The train run's metrics.csv and result.json, and the grid's ablation.csv and summary.csv."""
    from reproduce import ablate, train

    run, grid = os.path.join(folder, "run"), os.path.join(folder, "grid")
    assert train.main(TRAIN + ["--out", run]) == 0
    assert ablate.main(GRID + ["--out", grid]) == 0
    with open(os.path.join(run, "result.json"), encoding="utf-8") as handle:
        result = json.load(handle)
    return {
        "train metrics.csv": _table(os.path.join(run, "metrics.csv")),
        "train result.json": [result],
        "ablation.csv": _table(os.path.join(grid, "ablation.csv")),
        "summary.csv": _table(os.path.join(grid, "summary.csv")),
    }


def tolerance(column: str) -> dict:
    """How far a number may move on another CPU's kernels: a loss in its last digits, an error by one
    validation image (a fraction, or in percent), a difference of two errors (delta_*) by two; the rest not."""
    if "loss" in column:
        return {"rel": 1e-3, "abs": 1e-6}
    if "err" not in column and "delta" not in column:
        return {"rel": 1e-9, "abs": 0}
    images = 2 if column.startswith("delta") else 1
    unit = 1 / VAL_IMAGES if column.endswith("_err") else 100 / VAL_IMAGES
    return {"rel": 0, "abs": images * unit + 1e-9}


def _same(got, want, column):
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    if (
        isinstance(want, (int, float))
        and not isinstance(want, bool)
        and isinstance(got, (int, float))
    ):
        return got == pytest.approx(want, **tolerance(column))
    return got == want


# Columns added since the recording, each by name (a removed or renamed column still fails): the per-class
# summary of best.pt (reproduce/common/class_report.py); the flip-averaged errors (two of the ten crops).
FLIP = {"flip_top1_err", "flip_top5_err"}
ADDED = {
    "train result.json": {"val_mean_class_top1_err", "val_mean_class_acc", "val_weakest", *FLIP},
    "ablation.csv": FLIP,
    "summary.csv": {f"{name}_pct_{stat}" for name in FLIP for stat in ("mean", "std")},
}


@pytest.mark.slow
@pytest.mark.usefixtures("isolated_cache")
def test_the_commands_compute_what_they_computed_before_the_rework(tmp_path):
    with open(FIXTURE, encoding="utf-8") as handle:
        want = json.load(handle)
    got = json.loads(json.dumps(measure(str(tmp_path))))  # as the fixture holds them (NaN included)
    assert set(got) == set(want["tables"])
    for name, rows in want["tables"].items():
        assert len(got[name]) == len(rows), name
        for k, (a, b) in enumerate(zip(got[name], rows)):
            assert set(a) == set(b) | ADDED.get(name, set()), (name, k)
            wrong = {c: (a[c], b[c]) for c in b if not _same(a[c], b[c], c)}
            assert not wrong, (name, k, wrong)


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    sys.path.insert(0, os.path.dirname(HERE))
    os.environ["PAPER_ALEXNET_CACHE"] = tempfile.mkdtemp(prefix="behaviour-cache-")
    with tempfile.TemporaryDirectory() as folder:
        tables = measure(folder)
    with open(FIXTURE, "w", encoding="utf-8") as handle:
        json.dump({"train": TRAIN, "grid": GRID, "tables": tables}, handle, indent=1)
        handle.write("\n")
    print(f"wrote {FIXTURE}")
