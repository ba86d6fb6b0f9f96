"""The run config (reproduce/training/run_config.py): train's flags parsed once into one frozen, typed value; the
defaulted fields derived again when what they follow changes; argv made back from a config; config.json in
both formats; --resume held to the settings that define a run."""

import dataclasses
import json
import os

import pytest

from reproduce import ablate, train
from reproduce.training import run_config
from reproduce.common.args import UsageError
from reproduce.training.run_config import RunConfig

pytestmark = pytest.mark.usefixtures("shared_cache")
TINY = [
    "--data",
    "synthetic?classes=4&train=16&val=8",
    "--epochs",
    "1",
    "-b",
    "8",
    "--workers",
    "0",
    "--quiet",
]


def _parsed(*words):
    return run_config.from_args(train.get_args_parser().parse_args(list(words)), words)


def test_the_flags_parse_once_into_a_frozen_config_equal_to_the_defaults_built_in_python():
    config = _parsed()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0
    assert dataclasses.replace(config, command=()) == run_config.settle(RunConfig())
    assert (config.recipe, config.optimizer, config.lr, config.epochs, config.batch_size) == (
        "quick",
        "adam",
        1e-4,
        4,
        16,
    )
    assert set(config.defaulted) == set(run_config.DEFAULTABLE)
    assert (
        config.recipe_reason == "--recipe auto on synthetic data"
        and config.data_kind == "synthetic"
    )
    given = _parsed("--recipe", "paper", "--lr", "0.003")
    assert (
        given.recipe_reason == "--recipe paper"
        and "lr" not in given.defaulted
        and given.lr == 0.003
    )


def test_a_changed_field_rederives_what_follows_it_and_keeps_what_was_given():
    base = _parsed("--lr", "0.002")
    paper = run_config.change(base, recipe="paper")
    # the given rate stays
    assert (paper.optimizer, paper.schedule, paper.lr) == (
        "sgd",
        "plateau",
        0.002,
    )
    folder = run_config.change(_parsed(), data="folder:/my/photos")
    assert (folder.epochs, folder.batch_size, folder.schedule, folder.data_kind) == (
        12,
        32,
        "cosine",
        "folder",
    )
    assert folder.out == os.path.join("runs", "paper-folder")
    with pytest.raises(UsageError, match="--batch-size must be at least 1"):
        run_config.change(base, batch_size=0)
    with pytest.raises(UsageError, match="not a setting"):
        run_config.change(base, colour="red")


@pytest.mark.parametrize(
    "words",
    [
        (),
        (
            "--recipe",
            "paper",
            "--epochs",
            "3",
            "--no-pca",
            "--lr",
            "0.00031622776601683794",
            "--variant",
            "paper+no-lrn",
        ),
        (
            "--data",
            "folder:/x?val=0.2",
            "--mean",
            "channel",
            "--crop",
            "224",
            "--on-stall",
            "warn",
            "--seed",
            "7",
            "--optimizer",
            "sgd",
            "--two-gpu",
            "--ten-crop",
            "--amp",
            "--wd",
            "0",
        ),
    ],
)
def test_argv_made_from_a_config_gives_the_same_config_back(words):
    config = _parsed(*words)
    words_again = run_config.to_argv(config)
    assert dataclasses.replace(_parsed(*words_again), command=()) == dataclasses.replace(
        config, command=()
    )


def test_a_cell_label_setting_is_converted_as_its_flag_would_be():
    assert run_config.from_label("batch-size", "64") == {"batch_size": 64}
    assert run_config.from_label("no-flip", None) == {"no_flip": True}
    with pytest.raises(UsageError, match="choose from"):
        run_config.from_label("schedule", "sometimes")
    with pytest.raises(UsageError, match="not a valid value"):
        run_config.from_label("epochs", "many")


def test_config_json_holds_the_config_and_a_folder_of_the_old_format_still_reads(tmp_path):
    out = tmp_path / "run"
    config = run_config.change(_parsed(*TINY), out=str(out))
    assert train.run(config) == 0  # in-process, from the config alone
    record = json.loads((out / "config.json").read_text())
    # the flag, kept apart
    assert record["format"] == run_config.FORMAT and record["run"]["devices"] is None
    assert record["devices"] == ["cpu"] and record["processes"] == 1  # from what it gave
    assert (
        record["classes"] == ["disc", "ring", "square", "frame"]
        and record["model"]["name"] == "paper"
    )
    read = run_config.read_record(str(out))
    assert {k: read[k] for k in ("variant", "batch_size", "recipe", "seed", "devices")} == {
        "variant": "paper",
        "batch_size": 8,
        "recipe": "quick",
        "seed": 0,
        "devices": None,
    }
    assert run_config.differences(read, config) == []
    old = tmp_path / "old"  # format 1: the flags under "args"
    old.mkdir()
    (old / "config.json").write_text(
        json.dumps(
            {
                "args": {"variant": "paper", "data": "synthetic", "lr": 0.01},
                "recipe": "paper",
                "model": {"name": "paper"},
            }
        )
    )
    assert run_config.read_record(str(old))["lr"] == 0.01
    assert run_config.read_record(str(tmp_path / "none")) is None


def test_resume_refuses_other_defining_settings_and_allows_more_epochs(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert train.main(TINY + ["--out", out]) == 0
    capsys.readouterr()
    assert train.main(TINY + ["--out", out, "--resume", "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert "other settings (seed: 0 -> 5)" in err and len(err.strip().splitlines()) == 1
    assert train.main(TINY + ["--out", out, "--resume", "-b", "4"]) == 2
    assert "batch_size: 8 -> 4" in capsys.readouterr().err
    assert (
        train.main(
            TINY[:2] + ["--epochs", "2", *TINY[4:], "--out", out, "--resume", "--on-stall", "warn"]
        )
        == 0
    )


def test_a_grid_cell_is_the_grids_config_with_the_labels_settings(tmp_path):
    base = ablate.grid_config(ablate.GRIDS["paper"], TINY)
    cell = ablate.make_cell(base, "paper+no-lrn+no-pca@momentum=0.5", 2, str(tmp_path), True)
    assert (cell.config.variant, cell.config.no_pca, cell.config.momentum, cell.config.seed) == (
        "paper+no-lrn",
        True,
        0.5,
        2,
    )
    assert (
        cell.config.on_stall == "warn" and cell.config.ten_crop and cell.folder == cell.config.out
    )
    # the argv of a --jobs process, and of the cell's record, gives the same run
    again = _parsed(*cell.config.command)
    assert dataclasses.replace(again, command=()) == dataclasses.replace(cell.config, command=())


def test_a_finished_cell_is_known_by_its_config_and_by_the_argv_of_an_older_cell_json(tmp_path):
    base = ablate.grid_config(ablate.GRIDS["paper"], TINY)
    cell = ablate.make_cell(base, "paper@lr=0.001", 0, str(tmp_path), False)
    os.makedirs(cell.folder)
    marker = os.path.join(cell.folder, "cell.json")
    assert not ablate.finished(cell)
    for saved in (
        {"config": run_config.as_record(cell.config)},
        {"argv": list(cell.config.command)},
    ):
        with open(marker, "w", encoding="utf-8") as handle:
            json.dump({"status": "done", **saved}, handle)
        assert ablate.finished(cell)
        other = ablate.make_cell(base, "paper@lr=0.001", 0, str(tmp_path), False)
        other = dataclasses.replace(other, config=run_config.change(other.config, momentum=0.5))
        with pytest.raises(UsageError, match=r"other flags \(momentum: 0.9 -> 0.5\)"):
            ablate.finished(other)


def test_a_run_settles_its_config_once_and_its_pipeline_is_built_once_not_patched(
    tmp_path, monkeypatch
):
    """One preparation: argv becomes the settled config once (the --pretrained input included), and run()
    takes it as it is; the Augment is built with its scale and frozen, as config.json records it."""
    from paper_alexnet.data import Augment

    calls = []
    settle = run_config.settle
    monkeypatch.setattr(run_config, "settle", lambda config: calls.append(1) or settle(config))
    out = tmp_path / "run"
    assert train.main([*TINY, "--recipe", "quick", "--out", str(out)]) == 0
    assert len(calls) == 1
    record = json.loads((out / "config.json").read_text())
    assert record["augment"]["scale"] == record["quick_changes"]["scale"] != 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        Augment().scale = 2.0


def test_every_setting_is_a_declared_flag_and_train_parses_exactly_those():
    """A field of RunConfig is a declared flag or one of the four derived fields; train's parser is built from
    the declarations and from nothing else (its options: the declared flags, --help and --list-weights)."""
    fields = {field.name for field in dataclasses.fields(RunConfig)}
    assert fields - set(run_config.FLAGS) == {
        "data_kind",
        "defaulted",
        "pretrained_input",
        "command",
    }
    help_text = train.get_args_parser().format_help()
    for name, flag in run_config.FLAGS.items():
        assert flag.option(name) in help_text
    parsed = vars(train.get_args_parser().parse_args([]))
    assert set(parsed) == set(run_config.FLAGS)
    assert {k: v for k, v in parsed.items() if k not in run_config.DEFAULTABLE} == {
        name: getattr(RunConfig(), name)
        for name in run_config.FLAGS
        if name not in run_config.DEFAULTABLE
    }
