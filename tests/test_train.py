"""reproduce.train end to end on tiny data: the files a run leaves, resume after SIGKILL, bad input."""

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

from paper_alexnet import checkpoint
from paper_alexnet.checkpoint import Checkpoint
from paper_alexnet.engine import NonFiniteLoss
from reproduce import train
from reproduce.training import run_config
from reproduce.training import run_writer
from reproduce.common.args import Exit
from data_fixtures import blank_tree, folder_contents, image_tree, write_bad_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--data", "synthetic?classes=4&train=16&val=8", "-b", "8", "--workers", "0", "--quiet"]
TIMING = ("images_per_s", "seconds", "data_wait_s")


pytestmark = pytest.mark.usefixtures("shared_cache")


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_run_leaves_config_metrics_checkpoints_and_curves(tmp_path):
    out = tmp_path / "run"
    # the CUDA flags are recorded; on the CPU they set nothing (cuda_settings: tests/test_backends.py)
    flags = ["--deterministic", "--no-tf32"]
    assert train.main(TINY + ["--epochs", "2", "--out", str(out), *flags]) == 0
    config = run_config.read_record(str(out))
    assert config["recipe"] == "quick" and config["quick_changes"]["init"] == "he"
    assert config["deterministic"] is True and config["no_tf32"] is True
    # quick_changes: what the run used (the synthetic data's plateau schedule, the scale it divided by)
    changes = config["quick_changes"]
    assert changes["schedule"] == config["schedule"] == "plateau" and changes["optimizer"] == "adam"
    assert changes["scale"] == config["augment"]["scale"] != 1.0 and changes["lr"] == config["lr"]
    assert config["cuda_settings"] is None and isinstance(config["channels_last"], bool)
    assert config["batch_size"] == 8 and config["versions"]["torch"] == torch.__version__
    assert config["model"]["name"] == "paper" and config["model"]["num_classes"] == 4
    rows = _rows(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"] and list(rows[0]) == list(run_writer.METRICS)
    for name in ("checkpoint.pt", "best.pt"):
        payload = torch.load(out / name, weights_only=True)
        assert payload["variant"] == "paper" and set(payload["model"]) >= {
            "conv1.weight",
            "fc8.bias",
        }
        assert "augment" in payload["rng"] and payload["epoch"] in (1, 2)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quick_changes_record_the_optimiser_rate_and_scale_the_run_used(tmp_path):
    """The user's --optimizer and --lr replace the recipe's, and --mean torchvision keeps the scale at 1: config.json
    says so (it recorded the recipe's adam, 1e-4 and "1/pixel std" whatever the run used)."""
    out = tmp_path / "given"
    flags = [
        "--optimizer",
        "sgd",
        "--lr",
        "0.05",
        "--mean",
        "torchvision",
        "--variant",
        "paper+no-lrn",
    ]
    assert train.main(TINY + ["--epochs", "1", "--out", str(out), *flags]) == 0
    config = run_config.read_record(str(out))
    assert config["recipe"] == "quick" and config["augment"]["scale"] == 1.0
    assert config["quick_changes"] == {
        "init": "he",
        "scale": 1.0,
        "optimizer": "sgd",
        "lr": 0.05,
        "schedule": "plateau",
    }


def test_metrics_count_the_seconds_the_training_loop_waited_for_data(tmp_path, monkeypatch):
    """A slow loader shows in metrics.csv's data_wait_s, without a profiler."""
    from paper_alexnet.data import loader

    real = loader._Batches.__getitem__

    def slow(self, indices):
        time.sleep(0.25)
        return real(self, indices)

    monkeypatch.setattr(loader._Batches, "__getitem__", slow)
    out = tmp_path / "slow"
    assert train.main(TINY + ["--epochs", "1", "--out", str(out)]) == 0
    row = _rows(out / "metrics.csv")[0]
    # 2 batches of 8, each 0.25 s late
    assert 2 * 0.25 <= float(row["data_wait_s"]) <= float(row["seconds"])


def test_a_jpeg_store_decoded_on_the_device_trains_as_decoded_in_the_workers(tmp_path, monkeypatch):
    """--decode device (nvjpeg on a GPU; here the CPU's decoder in the main process) changes where the store's
    JPEGs are decoded, not a number of the run."""
    from paper_alexnet.data import loader
    from reproduce import prepare

    where, stage = [], loader.BatchLoader._stage

    def seen(self, batch):
        where.append(self.decode_on_device)
        return stage(self, batch)

    monkeypatch.setattr(loader.BatchLoader, "_stage", seen)

    store = tmp_path / "store"
    assert (
        prepare.main(
            [
                "--data",
                "synthetic?classes=4&train=16&val=8",
                "--out",
                str(store),
                "--format",
                "jpeg",
                "--quiet",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    runs = {}
    for way in ("device", "workers"):
        runs[way] = tmp_path / way
        assert (
            train.main(
                TINY[2:]
                + [
                    "--data",
                    f"store:{store}",
                    "--workers",
                    "2",
                    "--decode",
                    way,
                    "--epochs",
                    "1",
                    "--out",
                    str(runs[way]),
                ]
            )
            == 0
        )
        assert set(where) == {way == "device"} and len(where) == 2 + 1  # 2 train, 1 val batches
        where.clear()
    a, b = _rows(runs["device"] / "metrics.csv"), _rows(runs["workers"] / "metrics.csv")
    assert len(a) == len(b) == 1
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k not in TIMING} == {
            k: v for k, v in y.items() if k not in TIMING
        }


def test_best_checkpoint_keeps_its_epoch_when_the_latest_is_rewritten(tmp_path):
    latest, best = tmp_path / "checkpoint.pt", tmp_path / "best.pt"

    def at(epoch):
        return Checkpoint(model={}, variant="paper", classes=[], augment={}, epoch=epoch)

    checkpoint.save(str(latest), at(1))
    checkpoint.share(str(latest), str(best))
    checkpoint.save(str(latest), at(2))  # epoch 2 is not an improvement
    assert checkpoint.load(str(best)).epoch == 1 and checkpoint.load(str(latest)).epoch == 2
    checkpoint.share(str(latest), str(best))  # ... and epoch 3 would be
    assert checkpoint.load(str(best)).epoch == 2 and not list(tmp_path.glob(".*.tmp"))


# Every small-data tool on (none of them the paper's): resuming must give what an uninterrupted run gives too.
TOOLS_ON = [
    "--crop-scale",
    "0.35",
    "--jitter",
    "0.4",
    "--label-smoothing",
    "0.1",
    "--mixup",
    "0.2",
    "--cutmix",
    "1",
    "--ema",
    "0.9",
]


@pytest.mark.slow
@pytest.mark.parametrize("tools", [[], TOOLS_ON], ids=["paper", "small-data tools"])
def test_killed_mid_epoch_and_resumed_gives_the_same_metrics(tmp_path, tools):
    args = TINY + ["--epochs", "3", "--recipe", "paper", "--lr", "0.001"] + tools
    whole = tmp_path / "whole"
    assert train.main(args + ["--out", str(whole)]) == 0
    killed = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "reproduce.train", *args, "--out", str(killed)],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while (
        not (killed / "metrics.csv").exists() and process.poll() is None and time.time() < deadline
    ):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # somewhere in epoch 2
    assert process.wait() == -signal.SIGKILL
    assert len(_rows(killed / "metrics.csv")) < 3
    assert train.main(args + ["--out", str(killed), "--resume"]) == 0
    a, b = _rows(whole / "metrics.csv"), _rows(killed / "metrics.csv")
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k not in TIMING} == {
            k: v for k, v in y.items() if k not in TIMING
        }


def test_unreadable_files_are_skipped_counted_and_named(tmp_path, capsys):
    image_tree(str(tmp_path / "fruit" / "train"), {"apple": 4, "pear": 4})
    image_tree(str(tmp_path / "fruit" / "val"), {"apple": 2, "pear": 2}, start_seed=40)
    bad = write_bad_files(str(tmp_path / "fruit" / "train" / "pear"))
    with open(tmp_path / "fruit" / "val" / "apple" / "cut.jpg", "wb") as handle:
        handle.write(open(bad["truncated"], "rb").read())
    # 16000 x 16000 pixels in a few kB: PIL refuses it as a decompression bomb
    Image.new("1", (16000, 16000)).save(tmp_path / "fruit" / "train" / "apple" / "huge.png")
    out = tmp_path / "run"
    data = [
        "--data",
        f"folder:{tmp_path / 'fruit'}",
        "-b",
        "4",
        "--workers",
        "0",
        "--quiet",
        "--epochs",
        "1",
    ]
    assert train.main(data[:-1] + ["2", "--out", str(out)]) == 0
    assert [r["skipped_files"] for r in _rows(out / "metrics.csv")] == ["5", "5"]
    err = capsys.readouterr().err
    named = [line for line in err.splitlines() if line.startswith("warning: 5 unreadable files")]
    assert len(named) == 1  # said once, in the epoch that first met them, not again
    assert "skipped in this run's data (--strict stops at the first instead): " in named[0]
    assert f"; and 2 more; all of them in {out / 'unreadable.csv'}" in named[0]
    assert "| 5 unreadable files skipped" in err
    listed = list(csv.DictReader(open(out / "unreadable.csv", encoding="utf-8")))
    assert sorted((r["split"], os.path.basename(r["path"])) for r in listed) == [
        ("train", "empty.jpg"),
        ("train", "huge.png"),
        ("train", "notes.jpg"),
        ("train", "truncated.jpg"),
        ("val", "cut.jpg"),
    ]
    assert all(r["reason"] for r in listed)
    assert "too large to decode safely" in next(
        r["reason"] for r in listed if r["path"].endswith("png")
    )
    assert train.main(data + ["--out", str(tmp_path / "strict"), "--strict"]) == 1


@pytest.mark.parametrize(
    "extra,words",
    [
        (["--variant", "alexnet9"], "unknown variant"),
        (["--data", "mnist:/x"], "unknown data set"),
        (["--data", "folder:/no/such/place"], "does not exist"),
        (["--crop", "300"], "256"),
        (["-b", "0"], "batch-size"),
        (["--resume", "/no/such.pt"], "does not exist"),
        (["--device", "cuda:7"], "CUDA"),
        (["--epochs", "0"], "epochs"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, extra, words):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert train.main(TINY + ["--out", str(out)] + extra) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and words in err and len(err.splitlines()) == 1, err
    assert sorted(os.listdir(out)) == ["notes.txt"]


def test_corrupt_or_foreign_checkpoint_and_an_existing_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(TINY + ["--epochs", "1", "--out", str(out)]) == 0
    before = folder_contents(out)
    assert train.main(TINY + ["--epochs", "1", "--out", str(out)]) == 2  # would overwrite
    assert "--resume" in capsys.readouterr().err
    assert (
        train.main(
            TINY + ["--epochs", "2", "--out", str(out), "--resume", "--variant", "torchvision"]
        )
        == 2
    )
    assert "not 'torchvision'" in capsys.readouterr().err
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert train.main(TINY + ["--out", str(out), "--resume", str(tmp_path / "bad.pt")]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert folder_contents(out) == before


def test_non_finite_loss_stops_with_exit_3_and_keeps_the_last_checkpoint(
    tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    real = train.train_one_epoch
    calls = []

    def explode(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise NonFiniteLoss("the training loss became nan at step 1 of the epoch")
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", explode)
    assert train.main(TINY + ["--epochs", "3", "--out", str(out)]) == 3
    assert "nan" in capsys.readouterr().err
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert len(_rows(out / "metrics.csv")) == 1


def test_evaluate_one_checkpoint_and_a_folder(tmp_path, capsys):
    from reproduce import evaluate

    out = tmp_path / "run"
    assert train.main(TINY + ["--epochs", "1", "--out", str(out)]) == 0
    assert evaluate.main(["--checkpoint", str(out / "best.pt"), "--ten-crop", "-b", "8"]) == 0
    line = capsys.readouterr().out
    assert "top-1" in line and "ten crops" in line
    assert evaluate.main(["--all", str(out), "--csv", str(tmp_path / "all.csv"), "-b", "8"]) == 0
    rows = _rows(tmp_path / "all.csv")
    assert [os.path.basename(r["checkpoint"]) for r in rows] == ["best.pt", "checkpoint.pt"]
    # 4 classes: top-5 n/a
    assert all(0 <= float(r["top1_err"]) <= 1 and r["top5_err"] == "" for r in rows)
    assert rows[0]["top1_err"] == rows[1]["top1_err"]  # one epoch: best.pt is checkpoint.pt
    assert all(float(r["images_per_s"]) > 0 for r in rows)  # the rate the bench compares (features)
    assert "img/s" in capsys.readouterr().err
    assert evaluate.main(["--checkpoint", str(tmp_path / "none.pt")]) == 2


# --- stopping on a signal (SIGTERM from a scheduler, SIGINT from Ctrl-C) --------------------------------------------

SIGNALLED = (
    TINY[:1]
    + ["synthetic?classes=4&train=24&val=8"]  # 3 steps of 8 an epoch
    + TINY[2:]
    + ["--epochs", "3", "--recipe", "paper", "--lr", "0.001"]
)


def test_a_signal_during_the_last_validation_exits_with_its_code_and_resume_writes_what_was_skipped(
    tmp_path, monkeypatch, capsys
):
    """The last epoch's validation runs on after SIGTERM (the step was the last one); the run then writes its
    result.json and ends with 143, saying what it skipped, never "done" and 0: a scheduler that requeues on 143
    must not take it for complete. --resume writes the per-class files it left."""
    real = train.score

    def signalled(ctx, data, net, ten_crop=False, per_image=False):
        if per_image and not ten_crop:  # the epoch's validation
            os.kill(os.getpid(), signal.SIGTERM)
        return real(ctx, data, net, ten_crop=ten_crop, per_image=per_image)

    monkeypatch.setattr(train, "score", signalled)
    out = tmp_path / "run"
    assert train.main(TINY + ["--epochs", "1", "--out", str(out)]) == 143
    err = capsys.readouterr().err
    assert "stopped by SIGTERM before the per-class files" in err and "done:" not in err
    assert (out / "result.json").exists() and not (out / "per_class.csv").exists()
    monkeypatch.setattr(train, "score", real)
    assert train.main(TINY + ["--epochs", "1", "--out", str(out), "--resume"]) == 0
    assert (out / "per_class.csv").exists() and "done:" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("tools", [[], TOOLS_ON], ids=["paper", "small-data tools"])
def test_sigterm_mid_epoch_checkpoints_that_step_and_resume_equals_an_uninterrupted_run(
    tmp_path, monkeypatch, capsys, tools
):
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert train.main(SIGNALLED + tools + ["--out", str(whole)]) == 0
    real = train.train_one_epoch
    steps = []

    def signal_at_step_3_of_epoch_2(*args, **kwargs):
        inner = kwargs["on_step"]

        def on_step(step, *heard):
            inner(step, *heard)
            steps.append(step)
            if len(steps) == 3 + 2:  # epoch 1 has 3 steps; this is step 2 of epoch 2
                signal.raise_signal(signal.SIGTERM)  # a real signal, to the handler train installed

        return real(*args, **{**kwargs, "on_step": on_step})

    monkeypatch.setattr(train, "train_one_epoch", signal_at_step_3_of_epoch_2)
    capsys.readouterr()
    assert train.main(SIGNALLED + tools + ["--out", str(stopped)]) == 143
    assert len(steps) == 5  # it finished the step it was in, and no other
    err = capsys.readouterr().err
    assert "stopped by SIGTERM after step 2 of 3 of epoch 2" in err
    saved = checkpoint.load(str(stopped / "checkpoint.pt"))
    assert (saved.epoch, saved.step, saved.progress["steps"], saved.progress["seen"]) == (
        1,
        2,
        2,
        16,
    )
    assert len(_rows(stopped / "metrics.csv")) == 1
    monkeypatch.setattr(train, "train_one_epoch", real)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the run
    assert train.main(SIGNALLED + tools + ["--out", str(stopped), "--resume"]) == 0
    assert "and 2 steps of epoch 2" in capsys.readouterr().err
    a, b = _rows(whole / "metrics.csv"), _rows(stopped / "metrics.csv")
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        assert {k: v for k, v in x.items() if k not in TIMING} == {
            k: v for k, v in y.items() if k not in TIMING
        }
    final_a, final_b = (
        checkpoint.load(str(whole / "checkpoint.pt")),
        checkpoint.load(str(stopped / "checkpoint.pt")),
    )
    # bit for bit
    assert all(torch.equal(final_a.model[k], final_b.model[k]) for k in final_a.model)
    assert (final_a.trained is None) == (final_b.trained is None) == (not tools)
    # --ema: the average is best.pt's and checkpoint.pt's model; the stepped weights beside it
    if tools:
        assert all(torch.equal(final_a.trained[k], final_b.trained[k]) for k in final_a.trained)
        assert not torch.equal(final_a.trained["conv1.weight"], final_a.model["conv1.weight"])
    assert all(
        torch.equal(
            final_a.optimizer["state"][i]["velocity"], final_b.optimizer["state"][i]["velocity"]
        )
        for i in final_a.optimizer["state"]
    )


def test_sigterm_to_the_whole_process_group_with_loader_workers_still_checkpoints(tmp_path):
    """A scheduler (Slurm) or `kill -- -PGID` signals every process of the job, the loader's workers too."""
    out = tmp_path / "run"
    argv = [w for w in SIGNALLED if w not in ("--workers", "0")] + [
        "--workers",
        "2",
        "--epochs",
        "20",
    ]
    process = subprocess.Popen(
        [sys.executable, "-m", "reproduce.train", *argv, "--out", str(out)],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while not (out / "metrics.csv").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # in epoch 2, its workers running
    os.killpg(process.pid, signal.SIGTERM)
    err = process.communicate(timeout=300)[1]
    assert process.returncode == 143, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    assert checkpoint.load(str(out / "checkpoint.pt")).epoch >= 1


def test_ctrl_c_in_a_real_run_exits_130_with_a_checkpoint_that_resumes(tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "reproduce.train", *SIGNALLED, "--out", str(out)],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not (out / "metrics.csv").exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # at the end of epoch 1 or in epoch 2
    err = process.communicate(timeout=300)[1]
    assert process.returncode == 130, err
    assert "stopped by SIGINT" in err and "Traceback" not in err
    saved = checkpoint.load(str(out / "checkpoint.pt"))
    assert saved.epoch >= 1 and len(saved.metrics) == saved.epoch
    assert train.main(SIGNALLED + ["--out", str(out), "--resume"]) == 0
    assert len(_rows(out / "metrics.csv")) == 3


def test_a_second_signal_exits_at_once():
    script = (
        "import os, signal, time\n"
        "from paper_alexnet.signals import StopOnSignal\n"
        "with StopOnSignal() as stop:\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.2)\n"
        "    print('first:', stop(), stop.exit_code, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGTERM); time.sleep(5)\n"
        "    print('not reached', flush=True)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 143 and done.stdout == "first: True 143\n"
    assert "SIGTERM again: exiting now" in done.stderr


def _stuck(tmp_path, per_class=40):
    """A user's folder on which no net can leave chance: 4 classes of identical grey JPEGs (blank_tree), at
    batch 8 (with 40 a class, 20 steps an epoch, so the first epoch or 10% of 2 epochs ends at step 10)."""
    root = blank_tree(str(tmp_path / "photos"), train=per_class, val=4)
    return ["--data", f"folder:{root}", "-b", "8", "--workers", "0", "--quiet"]


def test_a_stalled_run_stops_by_the_deadline_keeps_its_checkpoint_and_names_the_command_that_avoids_it(
    tmp_path, capsys
):
    """§5's recipe on inputs that are all 0: its init's outputs are not uniform, so the loss is not at ln(4);
    the rate leaps it at once (3.7 to 140 at step 3 on AMD Zen 3; 41 units of logit per unit of error, from
    4096 fc7 inputs near 1 at lr 0.01) and the net, blind, is at chance at the deadline, step 10. Blind by
    construction, on any CPU; the first 10 steps are far from overflow (the loss goes NaN near step 43)."""
    out = tmp_path / "stuck"
    assert (
        train.main(_stuck(tmp_path) + ["--recipe", "paper", "--epochs", "2", "--out", str(out)])
        == Exit.STALLED
    )
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if x.startswith("stopped at step")]
    assert (
        len(line) == 1 and "stopped at step 10 of the run:" in line[0] and "chance 25.0%" in line[0]
    )
    saved = checkpoint.load(str(out / "checkpoint.pt"))  # nothing lost: --resume continues
    assert (saved.epoch, saved.step) == (0, 10)
    command = line[0].split("Run instead: ")[1].split("   (")[0]
    words = shlex.split(command)
    assert (
        words[:3] == ["python", "-m", "reproduce.train"]
        and words[words.index("--recipe") + 1] == "quick"
    )
    assert "--lr" not in words and words[words.index("--out") + 1] == f"{out}-quick"
    # the command runs as printed (here 2 steps; nothing learns these images, so it is watched, not stopped),
    # with the recipe it names
    assert (
        train.main(words[3:] + ["--epochs", "1", "--limit-train", "16", "--on-stall", "warn"]) == 0
    )
    assert json.loads((tmp_path / "stuck-quick" / "config.json").read_text())["recipe"] == "quick"


@pytest.mark.slow
def test_a_run_stuck_at_chance_with_on_stall_warn_is_told_once_in_its_first_epoch_and_keeps_its_rate(
    tmp_path, capsys
):
    """The plateau rule never divides at chance, and the warning comes before the first epoch ends. Stuck by
    construction on any CPU: every input is 0 and He init's biases are 0, so every layer outputs 0, fc8 gives
    the uniform distribution, and only biases learn (Adam: at most about --lr a step); the loss stays within
    1% of ln(4) and the validation error is exactly chance, 75%. 10 steps an epoch (40 images, batch 4)."""
    out = tmp_path / "stuck"
    args = _stuck(tmp_path, per_class=10) + [
        "-b",
        "4",
        "--recipe",
        "quick",
        "--schedule",
        "plateau",
    ]
    assert train.main(args + ["--epochs", "3", "--on-stall", "warn", "--out", str(out)]) == 0
    lines = capsys.readouterr().err.splitlines()
    warned = [
        i for i, x in enumerate(lines) if x.startswith("warning: at step 10:") and "at chance" in x
    ]
    first_epoch = [i for i, x in enumerate(lines) if x.startswith("epoch 1:")]
    assert len(warned) == 1 and warned[0] < first_epoch[0] and "stayed at ln(4)" in lines[warned[0]]
    assert "--lr 1e-05" in lines[warned[0]]  # not §5's init: the avoiding change is the rate
    rows = _rows(out / "metrics.csv")
    assert [float(r["val_top1_err"]) for r in rows] == [0.75] * 3  # at chance throughout
    assert [float(r["lr"]) for r in rows] == [1e-4] * 3
    assert checkpoint.load(str(out / "checkpoint.pt")).optimizer["param_groups"][0]["lr"] == 1e-4


def test_two_runs_started_at_once_into_one_folder_train_once_and_the_other_is_told_who_holds_it(
    tmp_path,
):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "reproduce.train", *TINY, "--epochs", "3", "--out", str(out)]
    runs = [
        subprocess.Popen(
            argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    ended = [(p.wait(timeout=600), p.stderr.read()) for p in runs]
    assert sorted(code for code, _ in ended) == [0, 2], ended
    refused = next(err for code, err in ended if code == 2).strip().splitlines()
    assert len(refused) == 1 and refused[0].startswith("error: "), refused
    # refused at its first moment by the lock, or (had the other already ended) by the run it left
    assert (
        f"{out} is in use by another run (process " in refused[0]
        or "already holds a run" in refused[0]
    )
    assert len(_rows(out / "metrics.csv")) == 3 and not list(out.glob(".*.tmp"))


def test_the_lock_names_its_holder_and_goes_with_its_process(tmp_path):
    from reproduce.common import run_lock

    out = str(tmp_path / "run")
    probe = (
        "import sys; from reproduce.common import run_lock; from reproduce.common.args import UsageError\n"
        "try:\n    with run_lock.hold(sys.argv[1]): print('held')\n"
        "except UsageError as err: print(err)\n"
    )
    with run_lock.hold(out):
        other = subprocess.run(
            [sys.executable, "-c", probe, out], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert f"in use by another run (process {os.getpid()} on " in other.stdout
    assert not os.path.exists(out)  # a lock writes nothing into the folder
    # a holder killed with SIGKILL leaves no lock behind
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            probe.replace("print('held')", "print('held', flush=True); input()"),
            out,
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    with run_lock.hold(out):
        pass


def test_compile_compiles_the_net_that_trains_and_saves_the_plain_net(tmp_path, monkeypatch):
    """--compile: torch.compile of what trains (here with dynamo's eager backend: the tracing, not minutes of code
    generation); the checkpoints hold the net's own names (no compile wrapper's prefix) and load as they are."""
    compiled = []
    real = torch.compile

    def traced_only(model, **kwargs):
        compiled.append(model)
        return real(model, backend="eager")

    monkeypatch.setattr(torch, "compile", traced_only)
    out = tmp_path / "compiled"
    assert train.main(TINY + ["--epochs", "1", "--compile", "--out", str(out)]) == 0
    assert len(compiled) == 1 and type(compiled[0]).__name__ == "AlexNet"
    saved = torch.load(out / "checkpoint.pt", weights_only=True)
    assert "conv1.weight" in saved["model"] and not any("_orig_mod" in k for k in saved["model"])
    assert run_config.read_record(str(out))["compile"] is True
