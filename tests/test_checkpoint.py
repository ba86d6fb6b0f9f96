"""The checkpoint format (paper_alexnet/checkpoint.py): its version, older files, bad files at every command
that reads one, and writes that fail (a full disk) without harming what was there."""

import errno
import os
import shutil

import pytest
import torch

from paper_alexnet import atomic, checkpoint
from paper_alexnet.checkpoint import Checkpoint, CheckpointError
from reproduce import evaluate, predict, train, visualize
from data_fixtures import colour_image, train_once

pytestmark = pytest.mark.usefixtures("shared_cache")

TINY = ["--data", "synthetic?classes=4&train=16&val=8", "-b", "8", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One run the tests only read."""
    root = train_once(tmp_path_factory, "checkpoint", TINY + ["--epochs", "1"])
    yield root / "run"
    shutil.rmtree(root, ignore_errors=True)


def _v1(payload: dict) -> dict:
    """The dict reproduce.train wrote before checkpoint.py existed (format 1): no 'format', 'step', 'progress'."""
    return {k: v for k, v in payload.items() if k not in ("format", "step", "progress")}


def test_a_run_writes_the_current_format_and_reads_it_back(run):
    # plain data: loads with weights_only
    raw = torch.load(run / "checkpoint.pt", weights_only=True)
    assert raw["format"] == checkpoint.FORMAT == "paper_alexnet.checkpoint/2"
    assert set(raw) == {"format"} | {f for f in Checkpoint.__dataclass_fields__}
    ckpt = checkpoint.load(str(run / "checkpoint.pt"))
    assert (ckpt.epoch, ckpt.step, ckpt.progress, ckpt.variant) == (1, 0, None, "paper")
    assert ckpt.classes == ["disc", "ring", "square", "frame"] and ckpt.optimizer is not None
    assert ckpt.data_stats().mean_image.shape == (3, 256, 256)


def test_files_of_format_1_still_load_and_evaluate(run, tmp_path, capsys):
    raw = torch.load(run / "best.pt", weights_only=True)
    old = tmp_path / "old.pt"
    torch.save(_v1(raw), old)
    ckpt = checkpoint.load(str(old))
    assert ckpt.step == 0 and ckpt.progress is None and ckpt.epoch == 1
    assert all(torch.equal(ckpt.model[k], raw["model"][k]) for k in raw["model"])
    oldest = tmp_path / "oldest.pt"  # the first files: no stats, init, two_tower
    torch.save(
        {k: v for k, v in _v1(raw).items() if k not in ("stats", "init", "two_tower")}, oldest
    )
    assert checkpoint.load(str(oldest)).stats is None
    capsys.readouterr()
    assert evaluate.main(["--checkpoint", str(old), "-b", "8", "--workers", "0"]) == 0
    new_line = capsys.readouterr().out.split(": ", 1)[1]
    assert evaluate.main(["--checkpoint", str(run / "best.pt"), "-b", "8", "--workers", "0"]) == 0
    assert capsys.readouterr().out.split(": ", 1)[1] == new_line  # the same net, the same errors
    # a format-1 checkpoint.pt resumes too
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    torch.save(_v1(raw), resumed / "checkpoint.pt")
    assert train.main(TINY + ["--epochs", "2", "--out", str(resumed), "--resume"]) == 0
    assert checkpoint.load(str(resumed / "checkpoint.pt")).epoch == 2


def _bad_files(run, tmp_path):
    whole = (run / "best.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "text.pt").write_text("these are not weights")
    raw = torch.load(run / "best.pt", weights_only=True)
    raw["format"] = "paper_alexnet.checkpoint/99"
    torch.save(raw, tmp_path / "newer.pt")
    torch.save({"something": "else"}, tmp_path / "other.pt")
    return {
        "truncated.pt": "truncated",
        "text.pt": "corrupt",
        "newer.pt": "newer",
        "other.pt": "not a paper_alexnet",
    }


def test_bad_checkpoints_are_one_line_and_exit_2_everywhere(run, tmp_path, capsys):
    image = tmp_path / "photo.jpg"
    colour_image(1, size=(300, 200)).save(image)
    for name, words in _bad_files(run, tmp_path).items():
        path = str(tmp_path / name)
        out = tmp_path / f"out-{name}"
        commands = [
            (evaluate.main, ["--checkpoint", path, "--csv", str(out / "e.csv")]),
            (predict.main, [str(image), "--checkpoint", path, "--csv", str(out / "p.csv")]),
            (visualize.main, ["filters", "--checkpoint", path, "--out", str(out / "f.png")]),
            (visualize.main, ["neighbors", "--checkpoint", path, "--out", str(out / "n.png")]),
            (train.main, TINY + ["--out", str(out), "--resume", path]),
            (train.main, TINY + ["--out", str(out), "--pretrained", path]),
        ]
        for main, argv in commands:
            capsys.readouterr()
            assert main(argv) == 2, (name, argv)
            err = capsys.readouterr().err.strip()
            assert err.startswith("error:") and len(err.splitlines()) == 1, (name, argv, err)
            if not (name == "other.pt" and main is train.main and "--pretrained" in argv):
                assert words in err, (name, argv, err)
            assert not out.exists(), (name, argv)  # nothing written


def test_pretrained_takes_a_checkpoint_or_torchvision_weights_and_refuses_another_net(
    run, tmp_path, capsys
):
    from paper_alexnet import build_model
    from paper_alexnet.weights import TORCHVISION_NAMES

    out = tmp_path / "tuned"
    assert (
        train.main(
            TINY
            + [
                "--epochs",
                "1",
                "--out",
                str(out),
                "--pretrained",
                str(run / "best.pt"),
                "--freeze-features",
                "--lr",
                "1e-12",
            ]
        )
        == 0
    )
    start, tuned = (
        checkpoint.load(str(run / "best.pt")).model,
        checkpoint.load(str(out / "best.pt")).model,
    )
    assert torch.equal(start["conv1.weight"], tuned["conv1.weight"])  # frozen, and loaded
    torchvision_net = build_model("torchvision", 4).state_dict()
    state = {
        f"{prefix}.{part}": torchvision_net[f"{name}.{part}"]
        for prefix, name in TORCHVISION_NAMES.items()
        for part in ("weight", "bias")
    }
    torch.save(state, tmp_path / "alexnet-owt.pth")
    assert (
        train.main(
            TINY
            + [
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "tv"),
                "--variant",
                "torchvision",
                "--pretrained",
                str(tmp_path / "alexnet-owt.pth"),
                "--mean",
                "torchvision",
            ]
        )
        == 0
    )
    capsys.readouterr()
    # into the paper net
    assert (
        train.main(
            TINY
            + [
                "--epochs",
                "1",
                "--out",
                str(tmp_path / "wrong"),
                "--mean",
                "torchvision",
                "--pretrained",
                str(tmp_path / "alexnet-owt.pth"),
            ]
        )
        == 2
    )
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert (
        len(errors) == 1
        and "variant 'torchvision'" in errors[0]
        and not (tmp_path / "wrong").exists()
    )


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "notes.json"
    path.write_text("old")
    with pytest.raises(atomic.WriteError, match="No space left on device"):
        with atomic.atomic_write(str(path)) as handle:
            handle.write("new, half")
            _no_space()
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["notes.json"]
    # the disk fills up while the data is flushed
    monkeypatch.setattr(atomic.os, "fsync", _no_space)
    with pytest.raises(atomic.WriteError):
        checkpoint.save(
            str(tmp_path / "c.pt"), Checkpoint(model={}, variant="paper", classes=[], augment={})
        )
    assert os.listdir(tmp_path) == ["notes.json"]


def test_disk_full_during_a_checkpoint_stops_the_run_and_keeps_the_last_one(
    tmp_path, monkeypatch, capsys
):
    out = tmp_path / "run"
    real = torch.save
    calls = []

    def fill_up(obj, handle, *args, **kwargs):  # the second checkpoint: half written, then ENOSPC
        calls.append(1)
        if len(calls) == 2:
            handle.write(b"PK\x03\x04" + b"\0" * 1000)
            _no_space()
        return real(obj, handle, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", fill_up)
    assert train.main(TINY + ["--epochs", "3", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: could not write") and str(out / "checkpoint.pt") in err[-1]
    assert "No space left on device" in err[-1]
    monkeypatch.setattr(checkpoint.torch, "save", real)
    kept = checkpoint.load(str(out / "checkpoint.pt"))
    assert kept.epoch == 1 and not list(out.glob("*.tmp"))  # nothing half-written left
    # and it resumes
    assert train.main(TINY + ["--epochs", "3", "--out", str(out), "--resume"]) == 0
    assert checkpoint.load(str(out / "checkpoint.pt")).epoch == 3


def test_read_weights_and_load_say_what_is_wrong(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(str(tmp_path / "none.pt"))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="bare state dict"):
        checkpoint.load(str(tmp_path / "bare.pt"))
    assert set(checkpoint.read_weights(str(tmp_path / "bare.pt"))) == {"conv1.weight"}
