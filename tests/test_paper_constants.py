"""paper_alexnet.paper against the numbers printed in the paper (copied here from its sections)."""

from paper_alexnet import paper


def test_constants_are_the_papers():
    # §3.3
    assert (paper.LRN_K, paper.LRN_SIZE, paper.LRN_ALPHA, paper.LRN_BETA) == (
        2,
        5,
        1e-4,
        0.75,
    )
    assert (paper.POOL_SIZE, paper.POOL_STRIDE) == (3, 2)  # §3.4
    # §3.5
    assert paper.CONV_CHANNELS == (96, 256, 384, 384, 256) and paper.FC_SIZES == (
        4096,
        4096,
    )
    assert paper.CONV_KERNELS == (11, 5, 3, 3, 3) and paper.CONV_STRIDES[0] == 4  # §3.5
    # §3.2
    assert [
        n for n, g in zip(("conv1", "conv2", "conv3", "conv4", "conv5"), paper.CONV_GROUPED) if g
    ] == ["conv2", "conv4", "conv5"]
    assert paper.DROPOUT == 0.5  # §4.2
    assert (paper.CROP_SIZE, paper.IMAGE_SIZE, paper.PCA_SIGMA) == (224, 256, 0.1)  # §2, §4.1
    assert (paper.BATCH_SIZE, paper.MOMENTUM, paper.WEIGHT_DECAY, paper.LEARNING_RATE) == (
        128,
        0.9,
        0.0005,
        0.01,
    )
    # §5
    assert (paper.INIT_STD, set(paper.BIAS_ONE_LAYERS)) == (
        0.01,
        {"conv2", "conv4", "conv5", "fc6", "fc7"},
    )
    assert (paper.LR_DROP_FACTOR, paper.LR_DROPS, paper.EPOCHS) == (10, 3, 90)  # §5
    assert paper.STATED_NEURONS == (253440, 186624, 64896, 64896, 43264, 4096, 4096, 1000)  # §3.5
