"""reproduce.ablate: the grid's files and schema, skipping finished cells, the summary arithmetic, bad input;
and the comparison nets it trains (Figure 1's four-layer net, torchvision's VGG-11, GoogLeNet, ResNet-18)."""

import math
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from paper_alexnet.networks import build_network, get_network, network_cost
from paper_alexnet import checkpoint
from reproduce import ablate, evaluate, train, visualize
from reproduce.ablation import tables as ablation_tables
from reproduce.training import run_config

TINY = [
    "--data",
    "synthetic?classes=4&train=16&val=8",
    "--epochs",
    "2",
    "-b",
    "8",
    "--workers",
    "0",
    "--quiet",
]
PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("shared_cache")


def _png_size(path):
    data = open(path, "rb").read(24)
    assert data[:8] == PNG
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# --- the comparison nets ---------------------------------------------------------------------------------------


def test_figure1_net_is_four_layers_and_costs_what_its_layers_say():
    config = get_network("figure1", num_classes=4)
    model = build_network(config)
    learned = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(learned) == 4  # §3.1: "a four-layer convolutional neural network"
    assert model(torch.randn(2, 3, 224, 224)).shape == (2, 4)
    # by hand: 32x32 input, 5x5 kernels with padding 2, pooling 3/2 floor: 32 -> 15 -> 7 -> 3
    params = (3 * 25 * 32 + 32) + (32 * 25 * 32 + 32) + (32 * 25 * 64 + 64) + (64 * 9 * 4 + 4)
    macs = 32 * 32 * 32 * 75 + 15 * 15 * 32 * 800 + 7 * 7 * 64 * 800 + 576 * 4
    assert network_cost(config) == {"params": params, "macs": macs}
    assert isinstance(build_network(get_network("figure1+tanh")).act, torch.nn.Tanh)


@pytest.mark.parametrize(
    "name, weights",
    [
        ("vgg11", "VGG11_Weights"),
        ("googlenet", "GoogLeNet_Weights"),
        ("resnet18", "ResNet18_Weights"),
        ("torchvision", "AlexNet_Weights"),
    ],
)
def test_comparison_nets_cost_what_torchvision_publishes(name, weights):
    import torchvision.models

    # torchvision's own figures, 1000 classes
    meta = getattr(torchvision.models, weights).DEFAULT.meta
    cost = network_cost(get_network(name))
    assert cost["params"] == meta["num_params"]
    assert round(cost["macs"] / 1e9, 3) == pytest.approx(meta["_ops"])


def test_comparison_nets_refuse_switches_and_the_paper_init():
    from paper_alexnet import ConfigError

    with pytest.raises(ConfigError, match="no switch"):
        get_network("resnet18+no-lrn")
    with pytest.raises(ConfigError, match="own init"):
        get_network("vgg11", init="he")


# --- the grid ------------------------------------------------------------------------------------------------------


def test_a_small_grid_writes_tidy_rows_and_skips_finished_cells(tmp_path, capsys):
    out = tmp_path / "grid"
    argv = [
        "--grid",
        "relu-tanh",
        "--lrs",
        "none",
        "--variants",
        "figure1,figure1+tanh",
        "--seeds",
        "0,1",
        "--out",
        str(out),
        *TINY,
    ]
    assert ablate.main(argv) == 0
    rows = pd.read_csv(out / "ablation.csv")
    assert list(rows.columns) == list(ablation_tables.COLUMNS)
    assert len(rows) == 4 and sorted(zip(rows["cell"], rows["seed"])) == [
        ("figure1", 0),
        ("figure1", 1),
        ("figure1+tanh", 0),
        ("figure1+tanh", 1),
    ]
    assert (
        set(rows["status"]) == {"done"}
        and set(rows["epochs"]) == {2}
        and set(rows["input_size"]) == {224}
    )
    assert set(rows["switches"].fillna("")) == {"", "tanh"}
    assert (rows[["val_top1_err", "ten_crop_top1_err"]].stack().between(0, 1)).all()
    assert rows[["val_top5_err", "ten_crop_top5_err"]].isna().all().all()  # 4 classes: top-5 is n/a
    for _, row in rows.iterrows():  # each row is its cell's own run
        metrics = pd.read_csv(out / "cells" / f"{row['cell']}-seed{row['seed']}" / "metrics.csv")
        assert row["final_val_top1_err"] == pytest.approx(metrics["val_top1_err"].iloc[-1])
        assert row["val_top1_err"] == pytest.approx(metrics["val_top1_err"].min())
        config = (out / "cells" / f"{row['cell']}-seed{row['seed']}" / "config.json").read_text()
        # the relu-tanh grid's flags
        assert '"wd": 0.0' in config and '"schedule": "none"' in config
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary["cell"]) == ["figure1", "figure1+tanh"] and list(summary["seeds"]) == [2, 2]
    assert "Figure 1" in (out / "summary.md").read_text()
    assert _png_size(out / "ablation.png") == (700, 300)  # the errors (no paper net: no deltas)
    # training error against epochs and seconds
    assert _png_size(out / "figure1.png") == (
        1300,
        450,
    )

    # a checkpoint of a comparison net evaluates like any other
    best = out / "cells" / "figure1-seed0" / "best.pt"
    assert evaluate.main(["--checkpoint", str(best), "--device", "cpu"]) == 0

    # a finished cell keeps best.pt's weights (without the optimiser's state), not the checkpoint it could
    # resume from
    assert (
        not list(out.glob("cells/*/checkpoint.pt")) and len(list(out.glob("cells/*/best.pt"))) == 4
    )
    kept = checkpoint.load(str(best))
    assert (
        kept.optimizer is None
        and kept.stats is not None
        and set(kept.model) >= {"conv1.weight", "fc4.bias"}
    )

    # run again: nothing trains; a cell killed after its first epoch resumes, one killed before any is redone
    stamp = (out / "cells" / "figure1-seed0" / "metrics.csv").stat().st_mtime_ns
    resumed = out / "cells" / "figure1-seed1"
    before = pd.read_csv(resumed / "metrics.csv")
    base = ablate.grid_config(ablate.GRIDS["relu-tanh"], TINY)
    cell = ablate.make_cell(base, "figure1", 1, str(out), True)
    for name in os.listdir(resumed):
        os.remove(resumed / name)
    assert train.main([*cell.config.command, "--epochs", "1"]) == 0
    os.remove(resumed / "result.json")  # a checkpoint after epoch 1: as if killed in epoch 2
    killed_early = out / "cells" / "figure1+tanh-seed1"
    for name in ("cell.json", "best.pt", "metrics.csv", "result.json"):
        os.remove(killed_early / name)
    capsys.readouterr()
    assert ablate.main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("finished earlier, skipped") == 2 and "resuming" in err
    assert (out / "cells" / "figure1-seed0" / "metrics.csv").stat().st_mtime_ns == stamp
    after = pd.read_csv(resumed / "metrics.csv")
    assert (
        list(after["epoch"]) == [1, 2]
        and after["train_loss"].iloc[0] == before["train_loss"].iloc[0]
    )
    assert (
        len(pd.read_csv(out / "ablation.csv")) == 4
        and len(pd.read_csv(killed_early / "metrics.csv")) == 2
    )

    # a grid written before the columns were renamed (variant held the label, net the variant) still collects
    rows = pd.read_csv(out / "ablation.csv")
    rows.rename(columns={"variant": "net"}).rename(columns={"cell": "variant"}).to_csv(
        out / "ablation.csv", index=False
    )
    chart = (out / "ablation.png").read_bytes()
    assert visualize.main(["curves", "--run", str(out), "--out", str(tmp_path / "chart.png")]) == 0
    assert _png_size(tmp_path / "chart.png") == (700, 300)
    # tanh cells: Figure 1's curves too
    assert _png_size(tmp_path / "chart-figure1.png") == (
        1300,
        450,
    )
    assert (out / "ablation.png").read_bytes() == chart  # reading a grid changes none of it
    assert "net" in pd.read_csv(out / "ablation.csv").columns
    assert (
        ablate.main(argv) == 0 and capsys.readouterr().err.count("finished earlier, skipped") == 4
    )
    assert list(pd.read_csv(out / "ablation.csv").columns) == list(ablation_tables.COLUMNS)

    # the same folder with other settings is refused, not silently reused; the same settings written out
    # (the rate SGD takes anyway) are the same cells
    assert ablate.main(argv + ["--lr", "0.02"]) == 2
    assert "was run with other flags (lr: 0.01 -> 0.02)" in capsys.readouterr().err
    assert (
        ablate.main(argv + ["--lr", "0.01"]) == 0
        and capsys.readouterr().err.count("finished earlier") == 4
    )


@pytest.mark.slow
def test_the_default_grid_runs_in_smoke_mode(tmp_path):
    """docs/recipes.md's `python -m reproduce.ablate --smoke` (tests/test_recipes_doc.py leaves it to this test)."""
    out = tmp_path / "smoke"
    assert ablate.main(["--smoke", "--out", str(out), "--quiet"]) == 0
    rows = pd.read_csv(out / "ablation.csv")
    assert list(rows["cell"]) == list(ablate.GRIDS["paper"].cells)
    assert set(rows["status"]) == {"done"} and rows["ten_crop_top1_err"].notna().all()
    # a data switch, same net
    assert list(rows.loc[rows["cell"] == "paper+no-pca", "variant"]) == ["paper"]
    assert rows.loc[rows["cell"] == "torchvision", "input_size"].item() == 224
    summary = pd.read_csv(out / "summary.csv").set_index("cell")
    # §3.3, beside the measured delta
    assert summary.loc["paper+no-lrn", "paper_delta_top1_pct"] == 1.4
    assert summary.loc["one-tower", "paper_delta_top5_pct"] == 1.2  # §3.2
    # errors, and the deltas with the paper's beside them
    assert _png_size(out / "ablation.png") == (
        1300,
        550,
    )
    title, _, command = (out / "summary.md").read_text().splitlines()[:3]
    assert title == "# paper grid on synthetic, 1 seed"  # the chart's title too: no flags in it
    # they are under it
    assert command == f"`python -m reproduce.ablate --smoke --out {out} --quiet`"
    # torchvision's net beside the paper's, timed now
    comparison = (out / "comparison.md").read_text()
    for net, params in (("paper", "56,909,194"), ("torchvision", "57,044,810")):
        assert f"| {net} | {params} |" in comparison
    assert "trains at" in comparison and "× torchvision's speed in the bench" in comparison
    assert "median of 1 round-robin repetition)" in comparison  # --smoke times once


def test_summary_arithmetic_on_a_hand_made_table():
    def row(cell, seed, top1, top5, epochs25=math.nan, status="done"):
        return {
            "cell": cell,
            "seed": seed,
            "status": status,
            "val_top1_err": top1,
            "val_top5_err": top5,
            "ten_crop_top1_err": top1 - 0.01,
            "ten_crop_top5_err": top5 - 0.01,
            "epochs_to_25": epochs25,
            "seconds_to_25": 10 * epochs25,
            "images_per_s": 100.0,
        }

    rows = pd.DataFrame(
        [
            row("paper", 0, 0.40, 0.20),
            row("paper", 1, 0.44, 0.18),
            row("paper", 2, 0.42, 0.22),
            row("paper+no-lrn", 0, 0.45, 0.21),
            row("paper+no-lrn", 1, 0.47, 0.25),
            row("paper+no-lrn", 2, 0.9, 0.9, status="diverged"),
            row("figure1", 0, 0.5, 0.1, epochs25=4),
            row("figure1", 1, 0.5, 0.1, epochs25=6),
            row("figure1+tanh", 0, 0.6, 0.1, epochs25=30),
        ]
    )
    summary = ablation_tables.summarize(rows).set_index("cell")
    # diverged left out
    assert summary.loc["paper", "seeds"] == 3 and summary.loc["paper+no-lrn", "seeds"] == 2
    assert summary.loc["paper", "val_top1_err_pct_mean"] == pytest.approx(42.0)
    # sample std of 40, 44, 42
    assert summary.loc["paper", "val_top1_err_pct_std"] == pytest.approx(2.0)
    # 21, 25
    assert summary.loc["paper+no-lrn", "val_top5_err_pct_std"] == pytest.approx(math.sqrt(8))
    assert summary.loc["paper+no-lrn", "delta_top1_pct"] == pytest.approx(46.0 - 42.0)
    assert summary.loc["paper+no-lrn", "delta_top5_pct"] == pytest.approx(23.0 - 20.0)
    assert summary.loc["paper+no-lrn", "delta_ten_crop_top1_pct"] == pytest.approx(45.0 - 41.0)
    assert math.isnan(summary.loc["paper", "delta_top1_pct"])
    assert (
        summary.loc["paper+no-lrn", "paper_delta_top1_pct"],
        summary.loc["paper+no-lrn", "paper_delta_top5_pct"],
    ) == (1.4, 1.2)
    assert math.isnan(summary.loc["figure1", "paper_delta_top1_pct"])
    assert summary.loc["figure1", "epochs_to_25_mean"] == 5
    [pair] = ablation_tables.relu_speedups(rows)  # seed 0 is the only seed both ran: 30 / 4
    assert (pair["relu"], pair["tanh"], pair["seeds"], pair["missing"]) == (
        "figure1",
        "figure1+tanh",
        1,
        0,
    )
    assert pair["epochs"].value == pytest.approx(7.5) and math.isnan(pair["epochs"].low)
    text = ablation_tables.markdown(summary.reset_index(), "t", rows=rows)
    assert (
        "| paper+no-lrn | 2 | 46.0 ± 1.4 | 23.0 ± 2.8 |" in text
        and "figure1+tanh over figure1: 7.50×" in text
    )


def test_deltas_carry_welchs_interval_worked_by_hand():
    def row(cell, seed, top1):
        return {
            "cell": cell,
            "seed": seed,
            "status": "done",
            "val_top1_err": top1,
            "val_top5_err": top1 / 2,
            "ten_crop_top1_err": top1,
            "ten_crop_top5_err": top1 / 2,
            "epochs_to_25": math.nan,
            "seconds_to_25": math.nan,
            "images_per_s": 1.0,
        }

    rows = pd.DataFrame(
        [
            row(cell, seed, value / 100)
            for cell, values in (
                ("paper", (20, 22, 24)),
                ("paper+no-lrn", (25, 27, 29)),
                ("paper+no-pca", (21, 23, 25)),
            )
            for seed, value in enumerate(values)
        ]
    )
    summary = ablation_tables.summarize(rows).set_index("cell")
    # each variance 4 over 3 seeds: se sqrt(8/3), Welch's df 4, t(0.975, 4) = 2.776 from a printed table
    half = 2.776 * math.sqrt(8 / 3)
    for cell, delta, beyond in (("paper+no-lrn", 5.0, True), ("paper+no-pca", 1.0, False)):
        assert summary.loc[cell, "delta_top1_pct"] == pytest.approx(delta)
        assert summary.loc[cell, ["delta_top1_low", "delta_top1_high"]].tolist() == pytest.approx(
            [delta - half, delta + half], abs=2e-3
        )
        assert bool(summary.loc[cell, "delta_top1_excludes_zero"]) is beyond
    text = ablation_tables.markdown(summary.reset_index(), "t")
    assert "| +5.0 [+0.5, +9.5] **yes** |" in text and "| +1.0 [-3.5, +5.5] no |" in text


def test_the_search_picks_the_fastest_rate_of_a_hand_made_lr_search_csv(tmp_path):
    path = tmp_path / "lr_search.csv"
    path.write_text(
        "cell,activation,lr,seed,epochs_to_25,seconds_to_25,epochs,final_train_top1_err,status\n"
        "figure1,relu,0.005,0,8,40,20,0.1,done\n"
        "figure1,relu,0.01,0,7,35,20,0.1,done\n"
        "figure1,relu,0.02,0,7,30,20,0.1,done\n"  # as few epochs as 0.01, fewer seconds
        "figure1,relu,0.04,0,not reached,not reached,20,0.9,done\n"
        "figure1+tanh,tanh,0.005,0,12,50,20,0.1,done\n"
        "figure1+tanh,tanh,0.01,0,9,45,20,0.1,done\n"
        "figure1+tanh,tanh,0.02,0,not reached,not reached,20,0.9,diverged\n"
        "figure1+tanh,tanh,0.04,0,4,20,20,0.1,done\n"
        "paper,relu,0.005,0,not reached,not reached,2,0.6,done\n"
        "paper,relu,0.01,0,not reached,not reached,2,0.4,done\n"
        "paper,relu,0.02,0,not reached,not reached,2,0.7,done\n"
    )
    chosen = ablation_tables.pick_rates(pd.read_csv(path), (0.005, 0.01, 0.02, 0.04))
    assert {cell: lr for cell, (lr, _) in chosen.items()} == {
        "figure1": 0.02,
        "figure1+tanh": 0.04,
        "paper": 0.01,
    }
    assert (
        "epoch 7, 30 s" in chosen["figure1"][1]
        and "end of the searched range" not in chosen["figure1"][1]
    )
    assert "end of the searched range" in chosen["figure1+tanh"][1]
    assert "no rate reached 25%" in chosen["paper"][1] and "40.0%" in chosen["paper"][1]


def test_figure1_grid_searches_each_units_rate_then_runs_the_seeds_with_no_regularization(
    tmp_path, capsys
):
    out = tmp_path / "figure1"
    argv = [
        "--grid",
        "relu-tanh",
        "--smoke",
        "--seeds",
        "0,1",
        "--lrs",
        "0.01,0.1",
        "--no-ten-crop",
        "--out",
        str(out),
        "--quiet",
    ]
    assert ablate.main(argv) == 0
    search = pd.read_csv(out / "lr_search.csv")
    assert list(search.columns) == list(ablation_tables.SEARCH_COLUMNS)
    assert sorted(zip(search["cell"], search["activation"], search["lr"], search["seed"])) == [
        ("figure1", "relu", 0.01, 0),
        ("figure1", "relu", 0.1, 0),
        ("figure1+tanh", "tanh", 0.01, 0),
        ("figure1+tanh", "tanh", 0.1, 0),
    ]
    # 1 epoch on 16 images: no rate gets to 25%
    assert (search["epochs_to_25"] == "not reached").all()
    chosen = ablation_tables.pick_rates(search)
    rows = pd.read_csv(out / "ablation.csv")
    assert sorted(zip(rows["cell"], rows["seed"])) == sorted(
        (f"{cell}@lr={chosen[cell][0]:g}", seed)
        for cell in ("figure1", "figure1+tanh")
        for seed in (0, 1)
    )
    # seed 0 at the chosen rate: searched
    assert capsys.readouterr().err.count("finished earlier, skipped") == 2
    for folder in out.glob("cells/*"):  # "no regularization of any kind" (§3.1), read back
        config = run_config.read_record(str(folder))
        assert (config["wd"], config["schedule"], config["optimizer"]) == (0.0, "none", "sgd")
        assert (
            config["augment"]["translate"],
            config["augment"]["flip"],
            config["augment"]["pca"],
        ) == (False,) * 3
        net = build_network(get_network(config["variant"]))
        assert not any(isinstance(m, torch.nn.Dropout) for m in net.modules())
    assert (
        "tanh's epochs (and seconds) to 25% training error over ReLU's"
        in (out / "summary.md").read_text()
    )
    assert _png_size(out / "figure1.png") == (1300, 450)


def test_epochs_to_25_percent_training_error():
    metrics = pd.DataFrame(
        {
            "epoch": [1, 2, 3, 4],
            "train_top1_err": [0.8, 0.3, 0.25, 0.1],
            "seconds": [5.0, 6.0, 7.0, 8.0],
        }
    )
    assert ablation_tables.epochs_to(metrics) == (3.0, 18.0)
    assert all(math.isnan(x) for x in ablation_tables.epochs_to(metrics, 0.05))


def test_hparam_sweeps_surround_the_resolved_defaults(tmp_path):

    base = run_config.from_words(["--out", str(tmp_path)])
    assert (base.epochs, base.batch_size, base.lr) == (4, 16, 1e-4)
    assert ablate.hparam_cells(base) == (
        "paper",
        "paper@epochs=2",
        "paper@epochs=8",
        "paper@batch-size=8",
        "paper@batch-size=32",
        "paper@lr=3e-05",
        "paper@lr=0.0003",
    )
    smoke = ablate.grid_config(ablate.GRIDS["paper"], ["--out", str(tmp_path)], smoke=True)
    # no 1 // 2; half and twice --smoke's batch of 8
    assert ablate.hparam_cells(smoke)[:3] == (
        "paper",
        "paper@epochs=2",
        "paper@batch-size=4",
    )
    cell = ablate.make_cell(base, "paper+no-lrn+no-flip@lr=0.01", 3, str(tmp_path), False)
    assert (cell.config.variant, cell.config.no_flip, cell.config.lr, cell.switches) == (
        "paper+no-lrn",
        True,
        0.01,
        "no-lrn+no-flip+lr=0.01",
    )
    assert cell.config.optimizer == base.optimizer and "lr" not in cell.config.defaulted
    # a setting of the label re-derives what it governs: another recipe brings its rule and rate
    sgd = ablate.make_cell(base, "paper@recipe=paper", 0, str(tmp_path), False).config
    assert (sgd.recipe, sgd.optimizer, sgd.lr, sgd.schedule) == ("paper", "sgd", 0.01, "plateau")
    assert ablate.make_cell(base, "paper@amp", 0, str(tmp_path), False).config.amp  # a bare switch


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--variants", "paper,alexnet9"], "unknown variant 'alexnet9'"),
        (["--variants", "paper@lr"], "write @lr=VALUE"),
        (["--variants", "paper@amp=fast"], "--amp is a switch"),
        (["--variants", "paper@seed=3"], "set by ablate"),
        (["--seed", "3"], "set by ablate"),
        (["--seeds", "a,b"], "--seeds takes integers"),
        (["--variants", "paper@batch-size=0"], "--batch-size must be at least 1"),
        (["--variants", "torchvision", "--two-gpu"], "--two-gpu needs a net split in two"),
        (["--variants", "paper@colour=red"], "--colour is not a flag of reproduce.train"),
        (["--colour", "red"], "does not accept these flags"),
        (["--jobs", "2"], "--jobs 2 runs one cell per GPU and 0 GPUs are visible here"),
        (["--jobs", "0"], "--jobs must be at least 1"),
        (["--jobs", "2", "--job-devices", "cpu"], "--job-devices names 1 device for --jobs 2"),
        (["--jobs", "2", "--job-devices", "cpu,cuda:3"], "no such CUDA device"),
        (["--jobs", "2", "--job-devices", "cpu,cpu", "--device", "cpu"], "not --device"),
        (["--lrs", "0.01"], "two or more positive learning rates"),
        (["--lrs", "fast,slow"], "--lrs takes learning rates"),
        (["--grid", "relu-tanh", "--lr", "0.1"], "--lr is what the search chooses"),
        (["--grid", "relu-tanh", "--variants", "figure1@lr=0.1"], "its own @lr= cannot take part"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_before_any_work(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    assert ablate.main(argv + ["--out", str(out), *TINY]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_jobs_train_cells_at_once_as_processes_of_their_own_with_the_results_of_one_at_a_time(
    tmp_path, capsys
):
    argv = [
        "--grid",
        "relu-tanh",
        "--lrs",
        "none",
        "--variants",
        "figure1,figure1+tanh",
        "--no-ten-crop",
        *TINY,
    ]
    # two jobs get half the cores each (ablate.run_jobs): the cells in this process take as many threads, as
    # oneDNN's kernels may sum in another order with another thread count (that depends on the CPU's kernels),
    # and a trajectory at the grid's rate amplifies that
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // 2))
    try:
        assert ablate.main(argv + ["--out", str(tmp_path / "serial")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert (
        ablate.main(
            argv + ["--out", str(tmp_path / "jobs"), "--jobs", "2", "--job-devices", "cpu,cpu"]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert (
        "figure1, seed 0: started on cpu" in err and "figure1+tanh, seed 0: started on cpu" in err
    )
    serial, jobs = (
        pd.read_csv(tmp_path / name / "ablation.csv").set_index("cell")
        for name in ("serial", "jobs")
    )
    for column in ("val_top1_err", "final_val_top1_err", "epochs"):
        assert jobs[column].to_dict() == pytest.approx(serial[column].to_dict())
    log = (tmp_path / "jobs" / "cells" / "figure1-seed0" / "train.log").read_text()
    assert "recipe:" in log and "done:" in log
    # finished
    assert not (tmp_path / "jobs" / "cells" / "figure1-seed0" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_sigterm_to_a_grid_of_jobs_checkpoints_every_running_cell_and_the_same_command_continues(
    tmp_path,
):
    out = tmp_path / "grid"
    argv = [
        "--grid",
        "relu-tanh",
        "--lrs",
        "none",
        "--variants",
        "figure1,figure1+tanh",
        "--no-ten-crop",
        "--out",
        str(out),
        "--jobs",
        "2",
        "--job-devices",
        "cpu,cpu",
        *TINY[:2],
        "--epochs",
        "6",
        *TINY[4:],
    ]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    process = subprocess.Popen(
        [sys.executable, "-m", "reproduce.ablate", *argv],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    cells = [out / "cells" / f"{name}-seed0" for name in ("figure1", "figure1+tanh")]
    deadline = time.time() + 300
    while (
        not all((c / "metrics.csv").exists() for c in cells)
        and process.poll() is None
        and time.time() < deadline
    ):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # to ablate alone: it passes the signal on
    err = process.communicate(timeout=300)[1]
    assert process.returncode == 143, err
    assert "interrupted" in err and "Traceback" not in err
    assert all(
        (c / "checkpoint.pt").exists() and "stopped by SIGTERM" in (c / "train.log").read_text()
        for c in cells
    )
    assert ablate.main(argv) == 0  # the same command finishes the grid
    rows = pd.read_csv(out / "ablation.csv")
    assert len(rows) == 2 and set(rows["epochs"]) == {6}


def test_cpu_jobs_share_the_cores_instead_of_each_spinning_on_all(tmp_path, monkeypatch):
    seen = []

    class Finished:  # a train process that has already ended well
        returncode = 0

        def __init__(self, argv, env=None, **kwargs):
            seen.append(env.get("OMP_NUM_THREADS"))

        def poll(self):
            return 0

    monkeypatch.setattr(ablate.subprocess, "Popen", Finished)
    monkeypatch.setattr(ablate.os, "cpu_count", lambda: 8)
    base = run_config.from_words(TINY)

    def cells(out):
        return [
            (k, ablate.make_cell(base, "figure1", k, str(tmp_path / out), False)) for k in (1, 2)
        ]

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert ablate.run_jobs(cells("a"), 2, ["cpu", "cpu"], lambda: None) == 0
    assert seen == ["4", "4"]  # 8 cores, two cells on them
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice is kept
    assert ablate.run_jobs(cells("b"), 2, ["cpu", "cpu"], lambda: None) == 0
    assert seen[2:] == ["3", "3"]


def test_a_cell_label_is_its_net_its_switches_and_its_settings():
    from reproduce.ablation.labels import Label

    label = Label.parse("figure1+tanh+no-pca@lr=0.02@batch-size=64")
    assert (label.net, label.switches, label.settings) == (
        "figure1",
        ("tanh", "no-pca"),
        ("lr=0.02", "batch-size=64"),
    )
    assert label.head == "figure1+tanh+no-pca" and Label.parse("paper").head == "paper"
    cell = ablate.make_cell(run_config.from_words(TINY), label.text, 1, "grid", False)
    assert cell.switches == "tanh+no-pca+lr=0.02+batch-size=64"
