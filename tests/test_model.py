"""The model against the paper's §3.5 table, §3.2 connectivity and §5 initialisation."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import paper_reference as ref
from tolerance import assert_same_function
from paper_alexnet import (
    ConfigError,
    LocalResponseNorm,
    ShapeError,
    build_model,
    get_config,
    list_switches,
    list_variants,
    load_torchvision_weights,
)

LEARNED = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
# §3.5, written out here: (kernels, input depth per kernel, kernel side, stride, groups)
PAPER_CONVS = [
    (96, 3, 11, 4, 1),
    (256, 48, 5, 1, 2),
    (384, 256, 3, 1, 1),
    (384, 192, 3, 1, 2),
    (256, 192, 3, 1, 2),
]
PAPER_FCS = [(256 * 6 * 6, 4096), (4096, 4096), (4096, 1000)]


def count(convs, fcs):
    return sum(k * depth * size * size + k for k, depth, size, _, _ in convs) + sum(
        i * o + o for i, o in fcs
    )


@pytest.fixture(scope="module")
def paper_net():
    torch.manual_seed(0)
    return build_model("paper").eval()


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_paper_parameter_count(paper_net):
    assert n_params(paper_net) == 60_965_224 == count(PAPER_CONVS, PAPER_FCS)


def test_paper_layers_are_the_table_of_section_3_5(paper_net):
    for name, (kernels, depth, size, stride, groups) in zip(LEARNED, PAPER_CONVS):
        layer = getattr(paper_net, name)
        assert isinstance(layer, nn.Conv2d), name
        assert tuple(layer.weight.shape) == (kernels, depth, size, size), name
        assert (layer.stride, layer.groups) == ((stride, stride), groups), name
    for name, (fan_in, fan_out) in zip(LEARNED[5:], PAPER_FCS):
        layer = getattr(paper_net, name)
        assert isinstance(layer, nn.Linear) and tuple(layer.weight.shape) == (fan_out, fan_in), name
    for norm in (paper_net.norm1, paper_net.norm2):
        assert isinstance(norm, LocalResponseNorm)
        assert (norm.size, norm.alpha, norm.beta, norm.k, norm.groups) == (5, 1e-4, 0.75, 2.0, 2)
    for pool in (paper_net.pool1, paper_net.pool2, paper_net.pool5):
        assert (pool.kernel_size, pool.stride) == (3, 2)
    assert paper_net.drop6.p == paper_net.drop7.p == 0.5
    assert isinstance(paper_net.drop5, nn.Identity)


def test_paper_forward_equals_the_network_written_out():
    torch.manual_seed(0)
    # float64: only the summation order may differ (tolerance.py)
    net = build_model("paper").double().eval()
    x = torch.randn(2, 3, 227, 227, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        assert_same_function(net(x * 50), ref.paper_forward(net, x * 50), 9216, 8)


def test_torchvision_variant_counts_as_torchvision():
    assert (
        n_params(build_model("torchvision"))
        == n_params(torchvision.models.alexnet(weights=None))
        == 61_100_840
    )


def test_one_tower_is_the_one_gpu_net_of_section_3_2():
    net = build_model("one-tower")
    halves = [
        (48, 3, 11, 4, 1),
        (128, 48, 5, 1, 1),
        (192, 128, 3, 1, 1),
        (192, 192, 3, 1, 1),
        (256, 192, 3, 1, 1),
    ]
    assert n_params(net) == count(halves, PAPER_FCS)
    assert all(getattr(net, f"conv{i}").groups == 1 for i in range(1, 6))


@pytest.mark.parametrize("variant", list_variants())
@pytest.mark.parametrize("classes", [1000, 10])
def test_every_variant_runs(variant, classes):
    net = build_model(variant, num_classes=classes).eval()
    size = net.config.input_size
    with torch.no_grad():
        assert tuple(net(torch.randn(2, 3, size, size)).shape) == (2, classes)


@pytest.mark.parametrize("switch", list_switches())
def test_every_switch_runs_and_trains(switch):
    net = build_model(f"paper+{switch}", num_classes=7).train()
    out = net(torch.randn(2, 3, 227, 227))
    out.sum().backward()
    assert tuple(out.shape) == (2, 7) and net.conv1.weight.grad is not None


def test_switches_change_what_they_say():
    assert isinstance(build_model("paper+no-lrn").norm1, nn.Identity)
    assert isinstance(build_model("paper+tanh").act, nn.Tanh)
    assert build_model("paper+no-groups").conv2.groups == 1
    assert all(
        isinstance(getattr(build_model("paper+no-dropout"), d), nn.Identity)
        for d in ("drop6", "drop7")
    )
    pooled = build_model("paper+pool-2x2")
    assert (pooled.pool1.kernel_size, pooled.pool1.stride) == (2, 2)
    # §3.4: z = s = 2 gives "output of the same dimensions" as z = 3, s = 2
    assert pooled.fc6.in_features == 256 * 6 * 6
    assert build_model("paper", num_classes=10, lrn=False, towers=1).conv4.groups == 1


def test_paper_224_is_cuda_convnet_rounding():
    torch.manual_seed(0)
    net = build_model("paper-224").double().eval()
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    seen = {}
    # before the in-place ReLU
    net.conv1.register_forward_hook(lambda m, i, o: seen.update(conv1=o.clone()))
    with torch.no_grad():
        net(x)
        # 1 + ceil((224 - 11) / 4) = 55: three zero columns/rows on the right and bottom edge
        want = F.conv2d(F.pad(x, (0, 3, 0, 3)), net.conv1.weight, net.conv1.bias, stride=4)
    assert tuple(seen["conv1"].shape[-2:]) == (55, 55)
    assert_same_function(seen["conv1"], want, 3 * 11 * 11)


def test_caffe_lrn_is_caffes_k1_alpha_over_n_over_all_maps():
    net = build_model("caffe")
    a = torch.rand(2, 96, 4, 4, dtype=torch.float64) * 60
    want = torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)(a)
    assert_same_function(net.norm1(a), want, 5)  # a window of 5 squares, then a power


def grad_wrt_input(fn, x, out_channel):
    x = x.clone().requires_grad_()
    fn(x)[:, out_channel].sum().backward()
    return x.grad.abs().flatten(2).sum(dim=(0, 2))  # per input channel


@pytest.mark.parametrize(
    "layer,channels,size", [("conv2", 96, 27), ("conv4", 384, 13), ("conv5", 384, 13)]
)
def test_grouped_layers_read_only_their_own_tower(paper_net, layer, channels, size):
    conv = getattr(paper_net, layer)
    # LRN stays in the tower
    block = (lambda x: paper_net.norm2(F.relu(conv(x)))) if layer == "conv2" else conv
    x = torch.rand(1, channels, size, size) + 0.1
    half = channels // 2
    first = grad_wrt_input(block, x, out_channel=0)  # an output map of tower 1
    last = grad_wrt_input(block, x, out_channel=conv.out_channels - 1)  # an output map of tower 2
    assert first[:half].sum() > 0 and first[half:].sum() == 0
    assert last[half:].sum() > 0 and last[:half].sum() == 0


def test_conv3_and_fc6_read_both_towers(paper_net):
    conv3 = grad_wrt_input(paper_net.conv3, torch.rand(1, 256, 13, 13), out_channel=0)
    assert conv3[:128].sum() > 0 and conv3[128:].sum() > 0
    pooled = torch.rand(1, 256, 6, 6).requires_grad_()
    paper_net.fc6(pooled.flatten(1))[:, 0].sum().backward()
    per_map = pooled.grad.abs().sum(dim=(0, 2, 3))
    assert per_map[:128].sum() > 0 and per_map[128:].sum() > 0


def test_paper_initialisation(paper_net):
    """§5: weights N(0, 0.01); biases 1 in conv2, conv4, conv5, fc6, fc7, and 0 in conv1, conv3, fc8."""
    for name in LEARNED:
        layer = getattr(paper_net, name)
        w = layer.weight.detach()
        assert abs(w.std().item() - 0.01) < 0.0005, name
        assert abs(w.mean().item()) < 0.001, name
        expected_bias = 1.0 if name in ("conv2", "conv4", "conv5", "fc6", "fc7") else 0.0
        assert torch.all(layer.bias == expected_bias), name


def test_caffe_initialisation():
    torch.manual_seed(0)
    net = build_model("caffe")
    biases = [getattr(net, name).bias.unique().tolist() for name in LEARNED]
    assert biases == [
        [0.0],
        [pytest.approx(0.1)],
        [0.0],
        [pytest.approx(0.1)],
        [pytest.approx(0.1)],
        [pytest.approx(0.1)],
        [pytest.approx(0.1)],
        [0.0],
    ]
    assert abs(net.fc6.weight.std().item() - 0.005) < 0.0003
    assert abs(net.conv1.weight.std().item() - 0.01) < 0.0005


def test_torchvision_weights_give_torchvisions_outputs():
    torch.manual_seed(0)
    theirs = torchvision.models.alexnet(weights=None).double()
    ours = build_model("torchvision").double()
    assert load_torchvision_weights(ours, theirs.state_dict()) == list(LEARNED)
    x = torch.randn(2, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        assert_same_function(ours.eval()(x), theirs.eval()(x), 9216, 8)
        # dropout sits where torchvision puts it: the same seed drops the same units
        ours.train(), theirs.train()
        torch.manual_seed(5)
        a = ours(x)
        torch.manual_seed(5)
        assert_same_function(a, theirs(x), 9216, 8)


def test_torchvision_weights_errors_and_fine_tuning():
    state = torchvision.models.alexnet(weights=None).state_dict()
    with pytest.raises(ConfigError, match="variant 'torchvision'"):
        load_torchvision_weights(build_model("paper"), state)
    ten = build_model("torchvision", num_classes=10)
    with pytest.raises(ConfigError, match="skip=\\('fc8',\\)"):
        load_torchvision_weights(ten, state)
    assert "fc8" not in load_torchvision_weights(ten, state, skip=("fc8",))
    with pytest.raises(ConfigError, match="missing"):
        load_torchvision_weights(ten, {"features.0.weight": state["features.0.weight"]})


def test_bad_names_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown variant 'resnet'.*paper"):
        build_model("resnet")
    with pytest.raises(ConfigError, match="unknown switch 'no-relu'"):
        build_model("paper+no-relu")
    with pytest.raises(ConfigError, match="unknown setting.*colour"):
        build_model("paper", colour=True)
    with pytest.raises(ConfigError, match="activation"):
        get_config("paper", activation="sigmoid")
    with pytest.raises(ConfigError, match="towers"):
        get_config("paper", towers=5)


def test_bad_inputs_are_refused_naming_the_layer(paper_net):
    with pytest.raises(ShapeError, match="vanishes at pool5"):
        paper_net(torch.zeros(1, 3, 40, 40))
    with pytest.raises(ShapeError, match="vanishes at conv1"):
        paper_net(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ShapeError, match="227×227.*paper-224"):
        paper_net(torch.zeros(1, 3, 224, 224))
    with pytest.raises(ShapeError, match="3-channel"):
        paper_net(torch.zeros(1, 1, 227, 227))
    with pytest.raises(ShapeError, match=r"\(N, C, H, W\)"):
        paper_net(torch.zeros(3, 227, 227))
    with pytest.raises(ShapeError, match="vanishes"):
        build_model("paper", input_size=30)
    tv = build_model("torchvision").eval()  # adaptive pooling: any size that does not vanish
    with torch.no_grad():
        assert tuple(tv(torch.zeros(1, 3, 100, 120)).shape) == (1, 1000)
    # 40 -> 9 -> 4 -> 4 -> 1 -> 1 -> 1 -> 1 -> 0
    with pytest.raises(ShapeError, match="vanishes at pool5"):
        tv(torch.zeros(1, 3, 40, 40))


def test_input_size_override_resizes_fc6():
    # 195 -> 47 -> 23 -> 23 -> 11 -> 11 -> 5
    net = build_model("paper", num_classes=10, input_size=195)
    assert net.fc6.in_features == 256 * 5 * 5
    assert tuple(net.eval()(torch.zeros(1, 3, 195, 195)).shape) == (1, 10)


@pytest.mark.parametrize("variant", ["paper", "paper-224", "torchvision"])
def test_torch_compile_traces_the_net_in_one_graph(variant):
    """`reproduce.bench --compile` and users' torch.compile: the whole forward is one graph (dynamo's
    eager backend, so that no compiler runs), and it computes what the module computes."""
    torch.manual_seed(0)
    model = build_model(variant, num_classes=10).double().eval()
    size = model.config.input_size
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    # torch's ops for the fused kernels: another order
    assert_same_function(compiled(x), model(x), 9216, 8)
    model.train()
    compiled(x).sum().backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0
