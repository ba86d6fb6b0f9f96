"""Which recipe runs (reproduce/training/recipes.py, run_config.settle): §5's on ImageNet, quick elsewhere,
per data kind and for a store by the data it was made of; and fine-tuning feeds pretrained weights the input
they learned on."""

import json
import os

import pytest
import torch

from paper_alexnet import build_model, checkpoint
from paper_alexnet.checkpoint import Checkpoint
from reproduce import train
from reproduce.training import recipes
from reproduce.training import run_config

pytestmark = pytest.mark.usefixtures("isolated_cache")


def _resolved(*argv):
    return run_config.from_args(train.get_args_parser().parse_args(list(argv)), argv)


@pytest.mark.parametrize(
    "spec, recipe, schedule, on_stall",
    [
        ("imagenet:/data/ilsvrc", "paper", "plateau", "warn"),
        (
            "synthetic",
            "quick",
            "plateau",
            "stop",
        ),  # 4 epochs far from converged: no cosine (recipes.py)
        ("folder:/my/photos", "quick", "cosine", "stop"),
        ("cifar10:data", "quick", "cosine", "stop"),
        ("caltech101:data", "quick", "cosine", "stop"),
    ],
)
def test_auto_runs_the_papers_recipe_on_imagenet_and_quick_elsewhere(
    spec, recipe, schedule, on_stall
):
    args = _resolved("--data", spec)
    assert (args.recipe, args.schedule, args.on_stall) == (recipe, schedule, on_stall)
    assert args.recipe_reason == f"--recipe auto on {spec.split(':')[0]} data"
    assert (args.optimizer, args.lr) == (
        {"paper": "sgd", "quick": "adam"}[recipe],
        {"paper": 0.01, "quick": 1e-4}[recipe],
    )
    # one flag away, and any flag given wins over the recipe's
    paper = _resolved("--data", spec, "--recipe", "paper")
    assert (paper.recipe, paper.optimizer, paper.lr, paper.schedule) == (
        "paper",
        "sgd",
        0.01,
        "plateau",
    )
    given = _resolved("--data", spec, "--schedule", "none", "--lr", "0.003", "--on-stall", "warn")
    assert (given.schedule, given.lr, given.on_stall) == ("none", 0.003, "warn")


def test_a_store_gets_the_defaults_of_the_data_it_was_made_from(tmp_path):
    for name, source, recipe in (
        ("ilsvrc", "imagenet:/data/ilsvrc", "paper"),
        ("fruit", "folder:/data/fruit", "quick"),
    ):
        os.makedirs(tmp_path / name)
        (tmp_path / name / "store.json").write_text(json.dumps({"spec": source}))
        args = _resolved("--data", f"store:{tmp_path / name}")
        assert args.recipe == recipe and args.out == os.path.join("runs", "paper-store")
    assert recipes.data_kind(f"store:{tmp_path / 'missing'}") == "store"


def test_the_recipe_tables_in_help_name_each_recipes_schedule_and_each_kinds_stall_rule():
    text = recipes.describe()
    assert "adam lr 0.0001, cosine schedule" in text and "sgd lr 0.01, plateau schedule" in text
    rows = {
        line.split()[0]: line.split()[1:5]
        for line in text.splitlines()[1:]
        if line.startswith("  ") and line.split()[0] in recipes.DATA_DEFAULTS
    }
    assert rows["imagenet"] == ["90", "128", "paper", "warn"] and rows["folder"] == [
        "12",
        "32",
        "quick",
        "stop",
    ]


# --- fine-tuning: the input the weights learned on ---------------------------------------------------------


def _package_weights(path, scale):
    model = build_model("paper", num_classes=4)
    checkpoint.save(
        str(path),
        Checkpoint(
            model=model.state_dict(),
            variant="paper",
            classes=list("abcd"),
            augment={"mean": "image", "scale": scale},
        ),
    )
    return str(path)


def test_auto_picks_the_recipe_whose_input_the_pretrained_weights_learned_on_and_says_so(
    tmp_path, capsys
):
    raw = _package_weights(tmp_path / "raw.pt", 1.0)
    out = tmp_path / "run"
    data = [
        "--data",
        "synthetic?classes=4&train=8&val=4",
        "-b",
        "4",
        "--epochs",
        "1",
        "--workers",
        "0",
        "--quiet",
    ]
    assert train.main(data + ["--pretrained", raw, "--out", str(out)]) == 0
    config = run_config.read_record(str(out))
    assert config["recipe"] == "paper" and config["optimizer"] == "sgd"
    assert config["recipe_reason"] == (
        "--recipe auto on synthetic data, with --pretrained weights trained on raw "
        "0-255 pixels minus the mean (--recipe paper, §2)"
    )
    assert (
        "recipe: paper, chosen by --recipe auto on synthetic data, with --pretrained"
        in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "weights, flags, remedy",
    [
        ("raw", ["--recipe", "quick"], "use --recipe paper"),
        ("unit", ["--recipe", "paper"], "use --recipe quick"),
        ("raw", ["--mean", "torchvision"], "drop --mean torchvision"),
        ("torchvision", ["--variant", "torchvision", "--mean", "image"], "add --mean torchvision"),
    ],
)
def test_a_recipe_that_would_feed_pretrained_weights_another_input_is_refused_before_any_work(
    tmp_path, capsys, weights, flags, remedy
):
    if weights == "torchvision":
        import torchvision

        path = str(tmp_path / "alexnet-owt-7be5be79.pth")
        torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    else:
        path = _package_weights(tmp_path / f"{weights}.pt", 1.0 if weights == "raw" else 0.0173)
    out = tmp_path / "run"
    code = train.main(
        [
            "--data",
            "synthetic?classes=4&train=8&val=4",
            "--pretrained",
            path,
            "--out",
            str(out),
            "--quiet",
            *flags,
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        code == 2
        and len(err) == 1
        and err[0].startswith("error: --pretrained")
        and err[0].endswith(remedy)
    )
    assert not out.exists()


def test_torchvision_weights_without_a_mean_get_torchvision_normalisation_and_the_run_says_so(
    tmp_path, capsys
):
    import torchvision

    path = str(tmp_path / "alexnet-owt-7be5be79.pth")
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    out = tmp_path / "run"
    assert (
        train.main(
            [
                "--data",
                "synthetic?classes=4&train=8&val=4",
                "-b",
                "4",
                "--epochs",
                "1",
                "--workers",
                "0",
                "--quiet",
                "--variant",
                "torchvision",
                "--pretrained",
                path,
                "--out",
                str(out),
            ]
        )
        == 0
    )
    config = run_config.read_record(str(out))
    assert config["augment"]["mean"] == "torchvision" and config["mean"] == "torchvision"
    line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("recipe:")][0]
    assert (
        "with --mean torchvision for --pretrained weights trained on ImageNet's mean and std"
        in line
    )
    assert "pixels normalised by ImageNet's mean and std (torchvision)" in line
