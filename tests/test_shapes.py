"""The shape arithmetic and its report, against the formula, a forward pass and torchvision."""

import io
import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torchvision
from torch import nn

import paper_reference as ref
from paper_alexnet import get_config, layer_shapes, list_switches, list_variants, totals
from paper_alexnet import shapes


def test_paper_sizes_follow_the_formula():
    """227 -> 55 -> 27 -> 27 -> 13 -> 13 -> 13 -> 13 -> 6, with the paddings that make §3.5's sizes."""
    s = 227
    expected = {}
    for name, k, st, p in [
        ("conv1", 11, 4, 0),
        ("pool1", 3, 2, 0),
        ("conv2", 5, 1, 2),
        ("pool2", 3, 2, 0),
        ("conv3", 3, 1, 1),
        ("conv4", 3, 1, 1),
        ("conv5", 3, 1, 1),
        ("pool5", 3, 2, 0),
    ]:
        s = ref.out_size(s, k, st, p)
        expected[name] = s
    got = {layer.name: layer.out_shape[1] for layer in layer_shapes(get_config("paper"))}
    assert {name: got[name] for name in expected} == expected
    assert [expected[n] for n in ("conv1", "pool1", "pool2", "pool5")] == [55, 27, 13, 6]


def test_arithmetic_is_written_as_a_student_writes_it():
    rows = {r["layer"]: r for r in shapes.rows(get_config("paper"))}
    assert rows["conv1"]["arithmetic"] == "(227 − 11 + 2·0) / 4 + 1 = 55"
    assert rows["conv2"]["arithmetic"] == "(27 − 5 + 2·2) / 1 + 1 = 27"
    rows224 = {r["layer"]: r for r in shapes.rows(get_config("paper-224"))}
    assert rows224["conv1"]["arithmetic"] == "(224 − 11 + 2·0) / 4 + 1 = 54.25 → 55 (ceil)"


def macs_by_hooks(model, size):
    """Multiply-adds of conv and linear layers, counted from a real torchvision forward pass."""
    total = []

    def hook(module, args, out):
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total.append(out[0].numel() * k)
        else:
            total.append(module.in_features * module.out_features)

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    return sum(total)


def test_multiply_adds_and_counts():
    paper = totals(layer_shapes(get_config("paper")))
    # §3.5 by hand: sum over layers of (output positions x kernels x weights per kernel)
    by_hand = (
        55 * 55 * 96 * 11 * 11 * 3
        + 27 * 27 * 256 * 5 * 5 * 48
        + 13 * 13 * 384 * 3 * 3 * 256
        + 13 * 13 * 384 * 3 * 3 * 192
        + 13 * 13 * 256 * 3 * 3 * 192
        + 9216 * 4096
        + 4096 * 4096
        + 4096 * 1000
    )
    assert paper["macs"] == by_hand == 724_406_816
    assert paper["params"] == 60_965_224
    assert paper["neurons"] == 290_400 + 186_624 + 64_896 + 64_896 + 43_264 + 4096 + 4096 + 1000
    tv = totals(layer_shapes(get_config("torchvision")))
    assert tv["macs"] == macs_by_hooks(torchvision.models.alexnet(weights=None), 224)
    assert tv["params"] == sum(
        p.numel() for p in torchvision.models.alexnet(weights=None).parameters()
    )


@pytest.mark.parametrize("name", list(list_variants()) + [f"paper+{s}" for s in list_switches()])
def test_report_agrees_with_a_forward_pass(name):
    shapes.verify(get_config(name))


def test_verify_fails_when_the_arithmetic_is_wrong(monkeypatch):
    config = get_config("paper")
    real = shapes.layer_shapes(config)
    broken = tuple(
        r if r.name != "pool2" else type(r)(**{**r.__dict__, "out_shape": (256, 12, 12)})
        for r in real
    )
    monkeypatch.setattr(shapes, "layer_shapes", lambda c: broken)
    with pytest.raises(
        shapes.ReportMismatch, match="pool2: arithmetic 256×12×12, forward pass 256×13×13"
    ):
        shapes.verify(config)


def run_main(capsys, *argv):
    code = shapes.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_csv_has_one_row_per_layer(capsys):
    code, out, _ = run_main(capsys, "--format", "csv")
    assert code == 0
    table = pd.read_csv(io.StringIO(out))
    assert {"layer", "out_channels", "out_height", "out_width", "params", "macs"} <= set(
        table.columns
    )
    assert list(table["layer"]) == [
        "conv1",
        "norm1",
        "pool1",
        "conv2",
        "norm2",
        "pool2",
        "conv3",
        "conv4",
        "conv5",
        "pool5",
        "fc6",
        "fc7",
        "fc8",
    ]
    assert table["params"].sum() == 60_965_224
    assert table.set_index("layer").loc[
        "conv1", ["out_channels", "out_height", "out_width"]
    ].tolist() == [96, 55, 55]


def test_compare_shows_both_nets(capsys):
    code, out, _ = run_main(capsys, "--compare", "torchvision")
    assert code == 0
    assert "paper: output" in out and "torchvision: output" in out
    assert "60,965,224" in out and "61,100,840" in out and "avgpool" in out
    code, out, _ = run_main(capsys, "--compare", "torchvision", "--format", "csv")
    assert set(pd.read_csv(io.StringIO(out))["variant"]) == {"paper", "torchvision"}


def test_compare_paper_and_code_2012_flags_every_difference(capsys):
    code, out, _ = run_main(capsys, "--compare", "paper", "code-2012", "--format", "markdown")
    assert code == 0
    rows = {
        line.split(" | ")[0].strip("| "): line for line in out.splitlines() if line.startswith("| ")
    }
    # conv1: the same 55x55 out of 224 only with 3 zero columns (rounding up); the within-map norm only in one
    assert rows["conv1"].rstrip(" |").endswith("padding")
    assert rows["mapnorm2"].rstrip(" |").endswith("only in code-2012")
    # every other layer has the same output, parameters and multiply-adds: nothing flagged
    same = [n for n in rows if n not in ("layer", "---", "conv1", "mapnorm2", "paper − code-2012")]
    assert all(rows[n].rstrip().endswith("|  |") for n in same), [rows[n] for n in same]
    # what the shapes cannot show: the settings that differ, each listed
    for setting in (
        "lrn_alpha: 0.0001 -> 2e-05",
        "norm_before_relu: (False, False) -> (True, False)",
        "map_norm: (False, False) -> (False, True)",
        "dropout_scaling: train -> test",
    ):
        assert f"- {setting}" in out, setting
    code, _, err = run_main(capsys, "--compare", "paper", "caffe", "torchvision")
    assert code == 2 and "one or two variants" in err


def test_notes_state_the_papers_inconsistencies(capsys):
    code, out, _ = run_main(capsys)
    assert code == 0
    for fact in ("54.25", "253,440", "55·55·96 = 290,400", "60,965,224", "650,000", "659,272"):
        assert fact in out, fact


def test_json_and_markdown(capsys):
    code, out, _ = run_main(capsys, "--variant", "one-tower", "--format", "json")
    data = json.loads(out)
    assert data["variants"][0]["name"] == "one-tower"
    assert data["variants"][0]["totals"]["params"] == sum(
        r["params"] for r in data["variants"][0]["layers"]
    )
    code, out, _ = run_main(
        capsys, "--format", "markdown", "--input-size", "195", "--num-classes", "10"
    )
    assert code == 0 and "| conv1 |" in out and "1 = 47" in out


def test_bad_input_is_a_message_not_a_traceback():
    for argv in (["--variant", "resnet"], ["--input-size", "30"], ["--compare", "paper+nope"]):
        result = subprocess.run(
            [sys.executable, "-m", "paper_alexnet.shapes", *argv], capture_output=True, text=True
        )
        assert result.returncode == 2, argv
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr, (
            result.stderr
        )


def test_module_entry_point_compare():
    result = subprocess.run(
        [sys.executable, "-m", "paper_alexnet.shapes", "--compare", "torchvision"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "torchvision: params" in result.stdout
