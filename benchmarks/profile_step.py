"""Where each millisecond of a training step goes: the paper net beside torchvision.models.alexnet.

    python benchmarks/profile_step.py                      # this CPU's own kernels (AVX-512 where it has them)
    ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/profile_step.py

torch.profiler over ``--steps`` training steps (forward, cross-entropy, backward, SGD with momentum: the
bench's step) after two warm-up steps, at ``--batch`` images. Each operator's *self* time (its own work,
not its children's) is put in one row: a layer's forward or backward where the operator's tensors are that
layer's (a convolution or matrix multiply is told by its weight's shape), else its kind (ReLU, LRN, pooling,
dropout, the optimiser, the loss, the rest). The table is milliseconds per step, per net, side by side;
the figures in docs/performance.md came from it.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from paper_alexnet import build_model, cpu_linear, fused_lrn  # noqa: E402
from paper_alexnet.cpu_memory import keep_freed_memory  # noqa: E402


def nets(classes: int) -> dict:
    import torchvision

    return {
        "paper": build_model("paper", classes),
        "torchvision.models.alexnet": torchvision.models.alexnet(weights=None, num_classes=classes),
    }


def layer_of(weights: dict, shapes) -> str:
    """The layer whose weight is among an operator's input shapes, as it is or transposed (addmm reads the
    weight transposed), or is the product's shape of two of them (a weight's gradient: grad^T @ input);
    '' when none is."""
    shapes = [tuple(s) for s in shapes or [] if s]
    candidates = list(shapes) + [s[::-1] for s in shapes if len(s) == 2]
    candidates += [
        (a[0], b[1]) for a, b in zip(shapes, shapes[1:]) if len(a) == len(b) == 2 and a[1] == b[0]
    ]
    for shape in candidates:
        if shape in weights:
            return weights[shape]
    return ""


KINDS = (  # operator name fragments -> row, in the order they are tried
    ("lrn", "LRN (with ReLU and pooling where fused)"),
    ("threshold_backward", "ReLU backward"),
    ("relu", "ReLU forward"),
    ("max_pool", "max-pooling"),
    ("adaptive_avg_pool", "adaptive average pool"),
    ("dropout", "dropout"),
    ("bernoulli", "dropout"),
    ("_foreach", "optimiser (momentum update)"),
    ("sgd", "optimiser (momentum update)"),
    ("nll_loss", "loss"),
    ("log_softmax", "loss"),
    ("cross_entropy", "loss"),
)


def onednn_linear(weights: dict, shapes) -> str:
    """The row of a oneDNN product of cpu_linear (forward: (x, W); input gradient: (g, W^T); weight
    gradient: (g^T, x^T), whose product is W's shape); '' when it is none of them."""
    a, b = (tuple(s) for s in (shapes or [(), ()])[:2])
    if b in weights:
        return f"{weights[b]} forward"
    if b[::-1] in weights:
        return f"{weights[b[::-1]]} backward"
    if len(a) == len(b) == 2 and (a[0], b[0]) in weights:
        return f"{weights[(a[0], b[0])]} backward"
    return ""


def row_of(event, weights: dict) -> str:
    name = event.key.lower()
    if "linear_pointwise" in name and (row := onednn_linear(weights, event.input_shapes)):
        return row
    layer = layer_of(weights, event.input_shapes)
    if layer and "conv" in name:
        return f"{layer} {'backward' if 'backward' in name else 'forward'}"
    # a linear layer: addmm forward (with its bias), mm backward (input, weight)
    if layer and "mm" in name:
        return f"{layer} {'forward' if 'addmm' in name else 'backward'}"
    for fragment, row in KINDS:
        if fragment in name:
            return row
    return "the rest (copies, reshapes, zeroing, autograd)"


def profile(
    model: torch.nn.Module, batch: int, steps: int, size: int, channels_last: bool = False
) -> dict:
    """Milliseconds per step by row (module docstring)."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    weights = {
        tuple(p.shape): n.rsplit(".", 1)[0] for n, p in model.named_parameters() if p.dim() > 1
    }
    names = {
        "features.0": "conv1", "features.3": "conv2", "features.6": "conv3", "features.8": "conv4",
        "features.10": "conv5", "classifier.1": "fc6", "classifier.4": "fc7", "classifier.6": "fc8",
    }  # fmt: skip
    weights = {shape: names.get(name, name) for shape, name in weights.items()}
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, foreach=True)
    model.train()

    def step():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(), step()
    with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    rows: dict = collections.defaultdict(float)
    for event in prof.key_averages(group_by_input_shape=True):
        if event.self_cpu_time_total <= 0:
            continue
        rows[row_of(event, weights)] += event.self_cpu_time_total / 1000 / steps
    return dict(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--channels-last", action="store_true", help="both nets channels-last")
    args = parser.parse_args(argv)
    keep_freed_memory()
    torch.manual_seed(0)
    found = {}
    for name, model in nets(1000).items():
        size = 227 if name == "paper" else 224
        found[name] = profile(model, args.batch, args.steps, size, args.channels_last)
    names = list(found)
    rows = sorted(
        {r for f in found.values() for r in f},
        key=lambda r: -max(f.get(r, 0) for f in found.values()),
    )
    print(
        f"# torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads, batch {args.batch}, {args.steps} profiled steps; "
        f"fused LRN kernel: {fused_lrn.applies(torch.zeros(1, 2, 3, 3))}; fc6..fc8 multiply by "
        f"{cpu_linear.backend()}" + ("; channels-last" if args.channels_last else "")
    )
    print(f"| {'ms per step (self time)':42s} | " + " | ".join(f"{n:>26s}" for n in names) + " |")
    print("|" + "-" * 44 + "|" + "|".join("-" * 28 for _ in names) + "|")
    for row in rows:
        print(
            f"| {row:42s} | " + " | ".join(f"{found[n].get(row, 0.0):26.1f}" for n in names) + " |"
        )
    totals = [sum(found[n].values()) for n in names]
    print(f"| {'total':42s} | " + " | ".join(f"{t:26.1f}" for t in totals) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
