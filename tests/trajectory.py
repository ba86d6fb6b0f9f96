"""Two training runs that should compute the same thing in another float summation order, compared by how
far training moved each layer: the yardstick for tests that hold on any x86-64 CPU (AVX2 or AVX-512 kernels
sum in other orders, and so do two processes, or two towers, against one)."""

import dataclasses

import torch

from paper_alexnet.networks import build_network, get_network


def initial_weights(argv):
    """The net of a reproduce.train command line as the run starts it: --seed (0), the --variant, the recipe's
    init (--recipe paper: §5's), 4 classes (the tests' synthetic data)."""

    def flag(name, default):
        return argv[argv.index(name) + 1] if name in argv else default

    assert flag("--recipe", None) == "paper" and "classes=4" in flag("--data", "")
    torch.manual_seed(int(flag("--seed", 0)))
    config = dataclasses.replace(
        get_network(flag("--variant", "paper"), num_classes=4), init="paper"
    )
    return build_network(config).state_dict()


def moved_alike(run, reference, argv, steps):
    """``run`` moved each layer where ``reference`` did, to within 1% a step of how far the layer moved.

    Summing in another order changes a gradient by a few ulps of its terms, and by whole units where a
    ReLU's input sits within those ulps of 0 and flips; the weights then differ by a share of each step that
    adds up over the steps (at most 0.9% of the displacement after 4 steps of two processes against one, on
    AMD Zen 3). A gradient scaled wrong, or taken over the wrong rows, moves a layer 30-100% elsewhere. The
    trajectory must not leap (§5's init at lr 0.001 does within 12 steps): from a leap on, runs that began
    1 ulp apart are whole steps apart."""
    start = initial_weights(argv)
    for name, weight in reference["model"].items():
        moved = float((weight - start[name]).norm())
        # the start is the one the runs began from: training moved each weight a small part of its size
        assert 0 < moved and (name.endswith("bias") or moved < 0.1 * float(start[name].norm())), (
            name
        )
        apart = float((run["model"][name] - weight).norm())
        assert apart <= 0.01 * steps * moved, (name, apart / moved)
