"""The named networks and the paper's ablation switches, all as ArchConfig values.

A variant name may carry switches: ``"paper+no-lrn+pool-2x2"``.
"""

from dataclasses import replace
from typing import Dict, Tuple

from . import code2012, paper
from .cli import closest
from .config import ArchConfig, ConfigError, config_fields

PAPER = ArchConfig()

VARIANTS: Dict[str, ArchConfig] = {
    "paper": PAPER,
    # §3.5 states 224; cuda-convnet rounded output sizes up, 1 + ceil((224 - 11) / 4) = 55,
    # i.e. zero padding on the right/bottom edge (and ceil in pooling, which is exact here).
    "paper-224": replace(
        PAPER,
        name="paper-224",
        input_size=paper.STATED_INPUT_SIZE,
        conv_rounding="ceil",
        pool_rounding="ceil",
        description="the paper's net at its stated 224 input, cuda-convnet's ceil rounding (conv1 still 55x55)",
    ),
    # The net the authors' own 2012 code ran for Table 2 (run #145, code2012.py; docs/code-2012.md): conv1
    # normalised before its ReLU, conv2's LRN followed by a within-map norm, alpha / n with k = 2, 0.03 init in
    # conv3-conv5, dropout scaled at test; 224 crops with cuda-convnet's rounding up.
    "code-2012": replace(
        PAPER,
        name="code-2012",
        input_size=paper.STATED_INPUT_SIZE,
        conv_channels=tuple(2 * c for c in code2012.TOWER_CONV),
        conv_strides=code2012.CONV_STRIDES,
        conv_paddings=code2012.CONV_PADDINGS,
        conv_rounding="ceil",
        pool_size=code2012.POOL_SIZE,
        pool_stride=code2012.POOL_STRIDE,
        pool_rounding="ceil",
        fc_sizes=(2 * code2012.TOWER_FC,) * 2,
        lrn_size=code2012.RNORM_SIZE,
        lrn_alpha=code2012.RNORM_SCALE / code2012.RNORM_SIZE,
        lrn_beta=code2012.RNORM_POW,
        lrn_k=code2012.RNORM_MIN_DIV,
        norm_before_relu=code2012.NORM_BEFORE_RELU,
        map_norm=(False, True),
        dropout=1 - code2012.DROPOUT_KEEP,
        dropout_scaling="test",
        weight_std=code2012.INIT_W,
        bias_init=code2012.INIT_B,
        description="the net the authors' 2012 code ran for Table 2 (layers-145.cfg): LRN before conv1's "
        "ReLU, alpha/n, a within-map norm after norm2, dropout scaled at test, 224 input rounded up",
    ),
    # torchvision.models.alexnet: the 2014 "one weird trick" net, not the paper's.
    "torchvision": ArchConfig(
        name="torchvision",
        input_size=224,
        conv_channels=(64, 192, 384, 256, 256),
        conv_paddings=(2, 2, 1, 1, 1),
        conv_grouped=(False,) * 5,
        towers=1,
        lrn=False,
        adaptive_pool=6,
        dropout_after=("pool5", "fc6"),
        weight_std=None,
        bias_init=None,
        description="torchvision.models.alexnet (the 2014 one-weird-trick net): 64-192-384-256-256, "
        "no LRN, no groups, adaptive 6x6 average pool, PyTorch's default init",
    ),
    # BVLC's models/bvlc_alexnet as released: LRN with k = 1 and alpha / n across all 96 maps,
    # ceil pooling, gaussian 0.01 (0.005 in fc6, fc7), biases 0.1 where the paper has 1.
    "caffe": replace(
        PAPER,
        name="caffe",
        lrn_k=1.0,
        lrn_alpha=paper.LRN_ALPHA / paper.LRN_SIZE,
        lrn_per_tower=False,
        pool_rounding="ceil",
        weight_std=(0.01, 0.01, 0.01, 0.01, 0.01, 0.005, 0.005, 0.01),
        bias_init=(0.0, 0.1, 0.0, 0.1, 0.1, 0.1, 0.1, 0.0),
        description="BVLC Caffe's bvlc_alexnet: LRN k=1, alpha/n, not per tower; biases 0.1",
    ),
    # §3.2: "a net with half as many kernels in each convolutional layer trained on one GPU",
    # whose last conv layer and fully-connected layers keep the full size.
    "one-tower": replace(
        PAPER,
        name="one-tower",
        conv_channels=(48, 128, 192, 192, 256),
        towers=1,
        description="§3.2's one-GPU comparison net: half the kernels in conv1-conv4, no groups",
    ),
}

SWITCHES: Dict[str, dict] = {
    "no-lrn": dict(lrn=False),  # §3.3 ablation
    "pool-2x2": dict(pool_size=2, pool_stride=2),  # §3.4: z = s = 2, no overlap
    "tanh": dict(activation="tanh"),  # §3.1 / Figure 1
    "no-groups": dict(towers=1),  # §3.2: every layer reads every map
    "no-dropout": dict(dropout=0.0),  # §4.2 ablation
}


def list_variants() -> Tuple[str, ...]:
    """Names accepted by build_model (each may be followed by +switch, see list_switches)."""
    return tuple(VARIANTS)


def list_switches() -> Tuple[str, ...]:
    return tuple(SWITCHES)


def get_config(variant: str = "paper", **overrides) -> ArchConfig:
    """The ArchConfig of ``variant`` ("name" or "name+switch+..."), with field overrides applied."""
    if isinstance(variant, ArchConfig):
        config = variant
    else:
        base, *switches = str(variant).split("+")
        if base not in VARIANTS:
            raise ConfigError(
                f"unknown variant {base!r}{closest(base, VARIANTS)}; choose from: {', '.join(VARIANTS)}"
            )
        config = VARIANTS[base]
        for switch in switches:
            if switch not in SWITCHES:
                raise ConfigError(
                    f"unknown switch {switch!r} in {variant!r}{closest(switch, SWITCHES)}; choose from: "
                    f"{', '.join(SWITCHES)}"
                )
            config = replace(config, name=f"{config.name}+{switch}", **SWITCHES[switch])
    unknown = sorted(set(overrides) - set(config_fields()))
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(config_fields())}"
        )
    return replace(config, **overrides) if overrides else config
