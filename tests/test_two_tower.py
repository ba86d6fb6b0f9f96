"""§3.2 as two towers on two devices (here both "cpu"): same function as the grouped net, crossings only
into conv3, fc6, fc7, fc8, every parameter on its tower's device, and one checkpoint format."""

import pytest
import torch

from paper_alexnet import TwoTowerAlexNet, build_model
from paper_alexnet.two_tower import crossing_bytes
from tolerance import assert_same_function
from trajectory import moved_alike


def _pair(variant="paper+no-dropout", classes=10, dtype=torch.float32):
    torch.manual_seed(0)
    # He init: activations that are not tiny
    grouped = build_model(variant, num_classes=classes, init="he").to(dtype)
    return grouped, TwoTowerAlexNet.from_grouped(grouped, devices=("cpu", "cpu")).to(dtype)


FAN_IN, DEPTH = 9216, 8  # fc6's sums are the longest (tolerance.py); conv1..fc8


def test_same_outputs_and_gradients_as_the_grouped_net():
    """In float64: the two layouts sum in other orders, and nothing else may differ (tolerance.py)."""
    grouped, towers = _pair(dtype=torch.float64)
    x = torch.randn(3, 3, 227, 227, dtype=torch.float64)
    y = torch.tensor([1, 4, 7])
    out_g, out_t = grouped(x), towers(x)
    assert out_g.std() > 0.1
    assert_same_function(out_t, out_g, FAN_IN, DEPTH)
    torch.nn.functional.cross_entropy(out_g, y).backward()
    torch.nn.functional.cross_entropy(out_t, y).backward()
    # The towers' gradients, put back in the grouped layout by hand: first tower's rows first. A weight's
    # gradient sums over the batch and conv1's 55x55 positions (9,075 terms) after the forward and backward
    # passes through every layer.
    for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"):
        for kind in ("weight", "bias"):
            halves = [getattr(getattr(t, name), kind).grad for t in towers.towers]
            want = getattr(getattr(grouped, name), kind).grad
            assert_same_function(torch.cat(halves), want, FAN_IN, 2 * DEPTH, msg=f"{name}.{kind}")
    assert_same_function(towers.fc8.weight.grad, grouped.fc8.weight.grad, FAN_IN, 2 * DEPTH)


def test_each_tower_holds_half_of_every_layer():
    _, towers = _pair("paper", 1000)
    a, b = towers.towers
    widths = [
        a.conv1.out_channels,
        a.conv2.out_channels,
        a.conv3.out_channels,
        a.conv4.out_channels,
        a.conv5.out_channels,
        a.fc6.out_features,
        a.fc7.out_features,
    ]
    assert widths == [48, 128, 192, 192, 128, 2048, 2048]
    # what each layer reads: its own tower's maps (conv2, conv4, conv5) or both (conv3, fc6, fc7)
    assert [a.conv2.in_channels, a.conv3.in_channels, a.conv4.in_channels, a.conv5.in_channels] == [
        48,
        256,
        192,
        192,
    ]
    assert (a.fc6.in_features, a.fc7.in_features, towers.fc8.in_features) == (9216, 4096, 4096)
    assert sum(p.numel() for p in towers.parameters()) == sum(
        p.numel() for p in build_model("paper").parameters()
    )


def test_a_tower_reads_the_other_only_at_the_crossings():
    """Change tower 1's conv3 output: tower 0's conv4 and conv5 outputs stay, its fc6 output moves."""
    _, towers = _pair()
    towers.eval()
    x = torch.randn(2, 3, 227, 227)
    seen = {}

    def keep(name):
        def hook(module, inputs, output):
            seen.setdefault(name, []).append(output.detach().clone())

        return hook

    a, b = towers.towers
    for name in ("conv4", "conv5", "fc6"):
        getattr(a, name).register_forward_hook(keep(name))
    towers(x)
    handle = b.conv3.register_forward_hook(lambda module, inputs, output: output * 3.0)
    towers(x)
    handle.remove()
    assert torch.equal(seen["conv4"][0], seen["conv4"][1]) and torch.equal(
        seen["conv5"][0], seen["conv5"][1]
    )
    assert not torch.allclose(seen["fc6"][0], seen["fc6"][1])
    # and before conv3: tower 0's conv2 does not see tower 1's conv1 maps
    seen.clear()
    a.conv2.register_forward_hook(keep("conv2"))
    towers(x)
    handle = b.conv1.register_forward_hook(lambda module, inputs, output: output * 3.0)
    towers(x)
    handle.remove()
    assert torch.equal(seen["conv2"][0], seen["conv2"][1])


def test_every_parameter_sits_on_its_tower_device():
    towers = TwoTowerAlexNet(build_model("paper", num_classes=10).config, devices=("cpu", "meta"))
    a, b = towers.towers
    assert {p.device.type for p in a.parameters()} == {"cpu"}
    assert {p.device.type for p in b.parameters()} == {"meta"}
    assert towers.fc8.weight.device.type == "cpu"  # fc8 on the first device


def test_conversion_both_ways_and_one_checkpoint_format():
    grouped, towers = _pair()
    state = towers.state_dict()
    assert set(state) == set(grouped.state_dict())  # the grouped layout
    for key, value in grouped.state_dict().items():
        assert torch.equal(state[key], value), key
    back = towers.to_grouped()
    x = torch.randn(1, 3, 227, 227)
    # the same net again
    torch.testing.assert_close(back.eval()(x), grouped.eval()(x), rtol=0, atol=0)
    other = TwoTowerAlexNet(grouped.config, ("cpu", "cpu")).double()
    other.load_state_dict(grouped.state_dict())
    want = grouped.double()(x.double())
    assert_same_function(other.eval()(x.double()), want, FAN_IN, DEPTH)
    with pytest.raises(ValueError):
        TwoTowerAlexNet(build_model("torchvision").config)  # not split in two towers


def test_bytes_that_cross_between_the_devices():
    """Figure 2: into conv3 each tower sends its 128 pooled 13x13 maps; into fc6 its 128x6x6 pool5;
    into fc7 its 2048 fc6 outputs; into fc8 (on the first device) the second tower sends its 2048."""
    floats = {"conv3": 2 * 128 * 13 * 13, "fc6": 2 * 128 * 6 * 6, "fc7": 2 * 2048, "fc8": 2048}
    assert crossing_bytes(build_model("paper").config) == {k: 4 * v for k, v in floats.items()}
    assert sum(crossing_bytes(build_model("paper").config, 2).values()) == 2 * sum(floats.values())


@pytest.mark.usefixtures("shared_cache")
def test_training_with_two_gpu_on_cpu_equals_the_grouped_net(tmp_path, monkeypatch, capsys):
    import csv

    from reproduce import evaluate, train

    # no leap (trajectory.py)
    args = [
        "--data",
        "synthetic?classes=4&train=16&val=8",
        "-b",
        "8",
        "--workers",
        "0",
        "--quiet",
        "--epochs",
        "2",
        "--variant",
        "paper+no-dropout",
        "--recipe",
        "paper",
        "--lr",
        "0.0001",
    ]
    assert train.main(args + ["--out", str(tmp_path / "grouped")]) == 0
    assert train.main(args + ["--out", str(tmp_path / "towers"), "--two-gpu"]) == 0
    assert "two towers (§3.2) both on the CPU" in capsys.readouterr().err
    rows = []
    for name in ("grouped", "towers"):
        with open(tmp_path / name / "metrics.csv") as handle:
            rows.append(list(csv.DictReader(handle)))
    for a, b in zip(*rows):
        assert a["val_top5_err"] == b["val_top5_err"] == ""  # 4 classes: top-5 is n/a
        # the losses within 1% a step, as trajectory.py bounds the weights (4 steps); the errors count images
        # and follow from the weights (an image whose two best classes are within float noise may flip)
        for key in ("train_loss", "val_loss"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=0.01 * 4), key
    one = torch.load(tmp_path / "grouped" / "checkpoint.pt", weights_only=True)
    two = torch.load(tmp_path / "towers" / "checkpoint.pt", weights_only=True)
    assert two["two_tower"] and set(two["model"]) == set(one["model"])
    moved_alike(two, one, args, steps=4)  # two convolutions sum in another order than one grouped
    # either checkpoint evaluates with either layout, to the same error
    outputs = []
    for path, flags in (
        (tmp_path / "towers" / "best.pt", []),
        (tmp_path / "grouped" / "best.pt", ["--two-gpu"]),
    ):
        assert evaluate.main(["--checkpoint", str(path), "-b", "8"] + flags) == 0
        outputs.append(capsys.readouterr().out.split(": ", 1)[1])
    assert outputs[0] == outputs[1]
    # a run is resumed in its own layout only
    assert train.main(args + ["--out", str(tmp_path / "towers"), "--resume", "--epochs", "3"]) == 2
    assert "--two-gpu" in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags,words",
    [
        (["--devices", "cpu"], "two devices"),
        (["--devices", "cpu,cuda:5"], "no such CUDA device"),
        (["--devices", "cpu,tpu"], "not a device"),
        (["--two-gpu", "--variant", "torchvision"], "two towers"),
    ],
)
def test_bad_placement_is_one_line_and_exit_2(tmp_path, capsys, flags, words):
    from reproduce import train

    out = tmp_path / "out"
    assert train.main(["--quiet", "--out", str(out)] + flags) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and words in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_the_shape_report_shows_the_crossing_budget():
    from paper_alexnet.shapes import render

    text = render([build_model("paper").config])
    forward = 4 * (2 * 128 * 13 * 13 + 2 * 128 * 6 * 6 + 2 * 2048 + 2048)
    assert f"{forward:,} B forward" in text and f"{2 * forward:,} B per image" in text
    assert "Between the two GPUs" not in render([build_model("torchvision").config])


def test_torch_compile_traces_the_towers_in_one_graph():
    torch.manual_seed(0)
    config = build_model("paper", num_classes=10).config
    towers = TwoTowerAlexNet(config, ("cpu", "cpu")).double().eval()
    x = torch.randn(2, 3, 227, 227, dtype=torch.float64)
    compiled = torch.compile(towers, backend="eager", fullgraph=True)
    # the graph takes torch's LRN ops where the module takes the fused kernel: another order only
    assert_same_function(compiled(x), towers(x), FAN_IN, DEPTH)


# --- GPUs a process under torchrun (NCCL refuses two processes on one GPU) --------------------------------


def _rule(gpus, local_rank, local_world):
    """The devices tower_devices gives, or "refused"."""
    from reproduce.common.args import UsageError
    from reproduce.common.placement import tower_devices

    try:
        return tuple(str(d) for d in tower_devices(gpus, local_rank, local_world))
    except UsageError:
        return "refused"


@pytest.mark.parametrize("gpus", range(0, 10))
@pytest.mark.parametrize("local_world", [1, 2, 3, 4, 8])
def test_two_gpu_gives_every_process_of_a_node_gpus_of_its_own_or_refuses(gpus, local_world):
    """Written here from the rule: no GPU, both towers on the CPU; one process, its pair (or the one GPU twice);
    several processes, cuda:2r and cuda:2r+1 where 2 x processes GPUs are visible, else refused on every rank."""
    got = {rank: _rule(gpus, rank, local_world) for rank in range(local_world)}
    if gpus == 0:
        assert all(d == ("cpu", "cpu") for d in got.values())
    elif local_world == 1:
        assert got[0] == (("cuda:0", "cuda:1") if gpus >= 2 else ("cuda:0", "cuda:0"))
    elif gpus >= 2 * local_world:
        assert got == {r: (f"cuda:{2 * r}", f"cuda:{2 * r + 1}") for r in range(local_world)}
        held = [d for pair in got.values() for d in pair]
        assert len(set(held)) == len(held)  # no GPU held twice
    else:
        assert set(got.values()) == {"refused"}  # every rank alike


def test_the_refusal_gives_the_arithmetic_and_the_remedy():
    from reproduce.common.args import UsageError
    from reproduce.common.placement import own_gpus, tower_devices

    with pytest.raises(UsageError) as refused:
        tower_devices(8, 5, 8)
    message = str(refused.value)
    assert "8 processes on this node" in message and "need 16 GPUs, and 8 are visible" in message
    assert message.endswith(
        "run torchrun --nproc-per-node 4, or leave out --two-gpu (one GPU a process: --nproc-per-node 8)"
    )
    with pytest.raises(UsageError) as refused:
        own_gpus(2, 4, 1)  # one GPU a process, 4 processes, 2 GPUs
    assert str(refused.value).endswith(
        "need 4 GPUs, and 2 are visible: run torchrun --nproc-per-node 2"
    )
    with pytest.raises(UsageError, match="--devices cuda:0,cuda:1 names the same GPUs"):
        own_gpus(8, 2, 2, named="cuda:0,cuda:1")
    own_gpus(8, 8, 1)  # one GPU each: passes


@pytest.fixture
def eight_gpus_and_no_cuda_call(monkeypatch):
    """The GPU count faked at 8, and every other torch.cuda call an error: a refusal must come from the
    counts alone, before anything touches a GPU."""

    def touched(*args, **kwargs):
        raise AssertionError("a CUDA call before the refusal")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    for name in ("_lazy_init", "init", "set_device", "current_device", "get_device_properties",
                 "get_device_name", "synchronize", "mem_get_info"):  # fmt: skip
        monkeypatch.setattr(torch.cuda, name, touched)


@pytest.mark.parametrize(
    "flags,words",
    [
        (
            ["--two-gpu"],
            "8 processes on this node with two GPUs a process (one a tower, §3.2) need 16 GPUs",
        ),
        (
            ["--devices", "cuda:0,cuda:1"],
            "--devices cuda:0,cuda:1 names the same GPUs for each of the 8",
        ),
        (["--device", "cuda:0"], "--device cuda:0 names the same GPUs for each of the 8 processes"),
    ],
)
def test_rank_5_of_8_on_8_gpus_is_refused_before_any_cuda_call(
    tmp_path, capsys, monkeypatch, eight_gpus_and_no_cuda_call, flags, words
):
    from reproduce import train

    for name, value in (("RANK", 5), ("LOCAL_RANK", 5), ("WORLD_SIZE", 8), ("LOCAL_WORLD_SIZE", 8)):
        monkeypatch.setenv(name, str(value))
    out = tmp_path / "out"
    assert train.main(["--quiet", "--out", str(out)] + flags) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and words in err and len(err.splitlines()) == 1, err
    assert not torch.distributed.is_initialized() and not out.exists()


def test_one_gpu_a_process_passes_with_eight_gpus_for_eight_processes(
    monkeypatch, eight_gpus_and_no_cuda_call
):
    from reproduce.common.placement import pick_device

    assert pick_device("auto", 5, 8) == torch.device("cuda", 5)
    assert pick_device("cpu", 5, 8) == torch.device("cpu")
