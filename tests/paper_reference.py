"""Independent, plain implementations of the paper's equations, written from the
paper (and ../shared/PAPER.md) for the tests only. Slow on purpose: loops, no tricks,
nothing imported from paper_alexnet."""

import torch
import torch.nn.functional as F

# §3.3, §3.4, §3.5 as the paper states them
K, N, ALPHA, BETA = 2.0, 5, 1e-4, 0.75


def lrn(a, n=N, alpha=ALPHA, beta=BETA, k=K, groups=1):
    """§3.3: b[i] = a[i] / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a[j]^2)^beta, per group."""
    channels = a.shape[1]
    per = channels // groups
    out = []
    for c in range(channels):
        first = (c // per) * per
        i = c - first
        lo, hi = max(0, i - n // 2), min(per - 1, i + n // 2)
        window = (a[:, first + lo : first + hi + 1] ** 2).sum(dim=1)
        out.append(a[:, c] / (k + alpha * window) ** beta)
    return torch.stack(out, dim=1)


def paper_forward(model, x):
    """The §3.5 network written out with torch.nn.functional, reading the model's weights.

    conv1 -> ReLU -> LRN (per GPU) -> maxpool 3/2 -> conv2 (2 groups) -> ReLU -> LRN (per GPU)
    -> maxpool 3/2 -> conv3 -> ReLU -> conv4 (2 groups) -> ReLU -> conv5 (2 groups) -> ReLU
    -> maxpool 3/2 -> fc6 -> ReLU -> fc7 -> ReLU -> fc8. Evaluation mode (dropout is identity).
    """
    p = {
        name: getattr(model, name)
        for name in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
    }
    x = F.conv2d(x, p["conv1"].weight, p["conv1"].bias, stride=4, padding=0)
    x = F.max_pool2d(lrn(F.relu(x), groups=2), 3, 2)
    x = F.conv2d(x, p["conv2"].weight, p["conv2"].bias, padding=2, groups=2)
    x = F.max_pool2d(lrn(F.relu(x), groups=2), 3, 2)
    x = F.relu(F.conv2d(x, p["conv3"].weight, p["conv3"].bias, padding=1))
    x = F.relu(F.conv2d(x, p["conv4"].weight, p["conv4"].bias, padding=1, groups=2))
    x = F.max_pool2d(
        F.relu(F.conv2d(x, p["conv5"].weight, p["conv5"].bias, padding=1, groups=2)), 3, 2
    )
    x = F.relu(F.linear(x.flatten(1), p["fc6"].weight, p["fc6"].bias))
    x = F.relu(F.linear(x, p["fc7"].weight, p["fc7"].bias))
    return F.linear(x, p["fc8"].weight, p["fc8"].bias)


def out_size(size, kernel, stride, padding=0):
    """(size - kernel + 2 padding) / stride + 1, rounded down."""
    return (size - kernel + 2 * padding) // stride + 1
