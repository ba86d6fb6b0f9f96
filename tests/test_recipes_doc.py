"""Every command of docs/recipes.md, read from the page itself (so the page cannot drift from the code), run on
fixtures in each data set's real on-disk layout and file names, shortened to one epoch on a few images."""

import os
import shlex

import numpy as np
import pytest
import torch

from reproduce import ablate, evaluate, predict, prepare, train, visualize
from data_fixtures import cifar_batches, colour_image, image_tree

DOC = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "recipes.md"
)
COMMANDS = {
    "train": train,
    "evaluate": evaluate,
    "ablate": ablate,
    "prepare": prepare,
    "visualize": visualize,
    "predict": predict,
}
# the smallest run that still takes a step and scores a batch: one batch of 8, four images scored (ablate's
# cells: two batches of 4; the baselines grid's VGG-11 at 8 took the test to 3.9 GB, at 4 to 3.3)
SHORT_TRAIN = [
    "--epochs",
    "1",
    "--limit-train",
    "8",
    "--limit-val",
    "4",
    "--workers",
    "0",
    "--quiet",
]


def doc_commands() -> list:
    """The page's ``python -m reproduce.*`` commands, continuation lines joined, trailing comments dropped."""
    return [argv for argv, _ in doc_runs()]


def doc_runs() -> list:
    """(command, the recipe line the page says it prints first, or None) for every command of the page: the
    indented ``recipe: ...`` lines that follow a block of commands belong, in order, to its train commands."""
    runs, current, said = [], None, 0
    with open(DOC, encoding="utf-8") as handle:
        for line in handle:
            text = line.rstrip("\n")
            if current is None and text.startswith("    recipe: "):
                said = next(k for k in range(said, len(runs)) if runs[k][0][2] == "reproduce.train")
                runs[said] = (runs[said][0], text.strip())
                said += 1
                continue
            if current is None and text.startswith("    python -m reproduce."):
                current = ""
            if current is None:
                continue
            part = text.strip().split("  #")[0].strip()
            current += " " + part.rstrip("\\").strip()
            if not part.endswith("\\"):
                runs.append((shlex.split(current.strip()), None))
                current = None
    return runs


def _shortened(argv: list) -> list:
    name, rest = argv[2].split(".")[1], list(argv[3:])
    rest = [os.path.expanduser(word) for word in rest]
    rest = ["0" if word == "0,1,2" else word for word in rest]  # one seed
    if name in ("train", "ablate"):
        rest += SHORT_TRAIN + (["-b", "4", "--no-ten-crop"] if name == "ablate" else [])
    if name in ("evaluate", "prepare"):
        rest += ["--workers", "0"]
    return [name, *rest]


# The page's `python -m reproduce.ablate --smoke`: tests/test_ablate.py::test_the_default_grid_runs_in_smoke_mode
# runs this very command (with --out and --quiet) and checks what it writes, so the page's test does not run
# the grid a second time.
SMOKE_GRID = ["python", "-m", "reproduce.ablate", "--smoke"]


def test_the_page_has_the_documents_commands_and_what_each_training_run_prints_first():
    names = [argv[2] for argv in doc_commands()]
    assert (
        names.count("reproduce.train") >= 5
        and "reproduce.ablate" in names
        and "reproduce.prepare" in names
    )
    assert all(says for argv, says in doc_runs() if argv[2] == "reproduce.train")
    assert SMOKE_GRID in doc_commands()


def doc_chains() -> list:
    """The page's runs in chains: a command that reads what an earlier one wrote (``--checkpoint runs/X/best.pt``
    after ``--out runs/X``, ``store:stores/X`` after ``prepare --out stores/X``) follows it in its chain; any
    other starts a chain of its own. Each chain is a test, so that the chains spread over the suite's workers.
    The page's ``ablate --smoke`` is left out (see SMOKE_GRID)."""
    chains, written = [], {}
    for argv, says in doc_runs():
        if argv == SMOKE_GRID:
            continue
        words = " ".join(argv[3:])
        home = next((k for path, k in written.items() if path in words), None)
        if home is None:
            chains.append([])
            home = len(chains) - 1
        chains[home].append((argv, says))
        if "--out" in argv:
            written[argv[argv.index("--out") + 1]] = home
        elif argv[2] == "reproduce.train":
            written[DEFAULT_OUT] = home
    return chains


DEFAULT_OUT = os.path.join("runs", "paper-synthetic")  # train's --out for the synthetic set
CHAINS = doc_chains()


def test_the_chains_hold_every_command_of_the_page_once():
    """What the chains below run is the page: every command but the smoke grid, each once, in the page's order
    within its chain, and a command that reads a run's files in the chain that wrote them."""
    ran = [argv for chain in CHAINS for argv, _ in chain]
    page = [argv for argv in doc_commands() if argv != SMOKE_GRID]
    assert sorted(map(" ".join, ran)) == sorted(map(" ".join, page))
    for chain in CHAINS:
        assert [page.index(argv) for argv, _ in chain] == sorted(
            page.index(argv) for argv, _ in chain
        )
    # what a command reads (a run's files, a store), an earlier one of its chain wrote
    for chain in CHAINS:
        written = []
        for argv, _ in chain:
            for before, word in zip(argv, argv[1:]):
                path = word.split(":", 1)[-1]
                if before != "--out" and path.startswith(("runs/", "stores/")):
                    assert any(path.startswith(out) for out in written), (argv, written)
            written.append(argv[argv.index("--out") + 1] if "--out" in argv else DEFAULT_OUT)


@pytest.mark.parametrize(
    "chain", CHAINS, ids=[f"{k}-{chain[0][0][2].split('.')[1]}" for k, chain in enumerate(CHAINS)]
)
@pytest.mark.slow
def test_every_command_on_the_page_runs_on_real_layouts(
    chain, tmp_path, monkeypatch, capsys, shared_cache
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    cifar_batches(str(tmp_path / "data"), per_class=3)  # data/cifar-10-batches-py
    image_tree(
        str(tmp_path / "data" / "caltech101" / "101_ObjectCategories"),
        {"BACKGROUND_Google": 2, "accordion": 10, "airplanes": 10, "anchor": 10},
    )
    os.makedirs(tmp_path / "data_fruit")
    image_tree(
        str(tmp_path / "data_fruit"), {"apple": 12, "banana": 12, "cherry": 12}, size=(120, 90)
    )
    if any("--pretrained" in argv for argv, _ in chain):
        import torchvision

        hub = tmp_path / ".cache" / "torch" / "hub" / "checkpoints"
        hub.mkdir(parents=True)
        torch.save(
            torchvision.models.alexnet(weights=None).state_dict(),
            hub / "alexnet-owt-7be5be79.pth",
        )
    colour_image(1, size=(300, 200)).save(tmp_path / "my_photo.jpg")
    for argv, says in chain:
        argv = [
            ("folder:" + str(tmp_path / "data_fruit")) if word == "folder:/data/fruit" else word
            for word in argv
        ]
        name, *rest = _shortened(argv)
        capsys.readouterr()
        code = COMMANDS[name].main(rest)
        out, err = capsys.readouterr()
        assert code == 0, (" ".join(argv), err[-2000:])
        if name == "train":
            out_dir = rest[rest.index("--out") + 1] if "--out" in rest else DEFAULT_OUT
            first = [line for line in err.splitlines() if line.startswith("recipe:")]
            # the recipe line the page quotes under it
            assert first == [says], (
                " ".join(argv),
                first,
            )
            assert all(
                os.path.exists(os.path.join(out_dir, f))
                for f in ("best.pt", "metrics.csv", "config.json")
            )
            if "--tensorboard" in rest:
                assert os.listdir(os.path.join(out_dir, "tb"))
            if out_dir == "runs/cifar10-finetune":
                assert np.isfinite(
                    float(open(f"{out_dir}/metrics.csv").read().splitlines()[1].split(",")[2])
                )
