"""Every constant of the 2012 paper, in one place, each with its section.

Krizhevsky, Sutskever, Hinton, "ImageNet Classification with Deep
Convolutional Neural Networks", NIPS 2012. Section numbers (§) are the
paper's. Nothing else in the package writes one of these numbers down: it
imports it from here.

Numbers the paper *states* but that disagree with arithmetic are kept under
``STATED_*`` names so that the shape report can show the disagreement.
"""

# §2 The data set ------------------------------------------------------------
IMAGE_SIZE = 256  # §2: shorter side rescaled to 256, central 256x256 patch kept
NUM_CLASSES = 1000  # §2: ILSVRC has 1000 categories

# §3.1 ReLU nonlinearity ------------------------------------------------------
ACTIVATION = "relu"  # §3.1: f(x) = max(0, x) after every conv and fc layer

# §3.2 Training on multiple GPUs ---------------------------------------------
TOWERS = 2  # §3.2: half of the kernels of every layer on each of two GPUs

# §3.3 Local response normalisation ------------------------------------------
#   b[i] = a[i] / (k + alpha * sum_{j=max(0, i-n/2)}^{min(N-1, i+n/2)} a[j]^2)^beta
LRN_K = 2.0  # §3.3
LRN_SIZE = 5  # §3.3: n, the number of adjacent kernel maps summed over
LRN_ALPHA = 1e-4  # §3.3: NOT divided by n (torch.nn.LocalResponseNorm and Caffe divide)
LRN_BETA = 0.75  # §3.3

# §3.4 Overlapping pooling ---------------------------------------------------
POOL_SIZE = 3  # §3.4: z, the side of the pooling window
POOL_STRIDE = 2  # §3.4: s < z, so neighbouring windows overlap

# §3.5 Overall architecture --------------------------------------------------
CONV_CHANNELS = (96, 256, 384, 384, 256)  # §3.5: kernels in conv1..conv5
CONV_KERNELS = (11, 5, 3, 3, 3)  # §3.5: 11x11x3, 5x5x48, 3x3x256, 3x3x192, 3x3x192
CONV_STRIDES = (4, 1, 1, 1, 1)  # §3.5: "a stride of 4 pixels" for conv1
# Paddings are not stated in the paper; these make its map sizes (55, 27, 13) come out.
CONV_PADDINGS = (0, 2, 1, 1, 1)
# §3.2/§3.5: conv2, conv4, conv5 read only the maps on their own GPU (groups = 2).
CONV_GROUPED = (False, True, False, True, True)
FC_SIZES = (4096, 4096)  # §3.5: fc6, fc7
# The input size that makes (size - 11) / 4 + 1 = 55 an integer (see STATED_INPUT_SIZE).
INPUT_SIZE = 227

# §4.1 Data augmentation -----------------------------------------------------
CROP_SIZE = 224  # §4.1: random 224x224 patches (227 is what the arithmetic needs)
PCA_SIGMA = 0.1  # §4.1: a_i ~ N(0, 0.1), drawn once per image per use
TEN_CROP = 10  # §4.1: four corners + centre, and their reflections

# §4.2 Dropout ---------------------------------------------------------------
DROPOUT = 0.5  # §4.2: on the outputs of the first two fully-connected layers

# §5 Details of learning -----------------------------------------------------
BATCH_SIZE = 128  # §5
MOMENTUM = 0.9  # §5
WEIGHT_DECAY = 5e-4  # §5: inside the velocity, v <- 0.9 v - 0.0005 eps w - eps grad
LEARNING_RATE = 0.01  # §5: the same for all layers
LR_DROP_FACTOR = 10  # §5: divided by 10 when validation error stops improving
LR_DROPS = 3  # §5: "reduced three times prior to termination"
EPOCHS = 90  # §5: "roughly 90 cycles through the training set"
INIT_STD = 0.01  # §5: every weight ~ N(0, 0.01)
# §5: biases 1 in conv2, conv4, conv5 and the fully-connected hidden layers, 0 elsewhere.
BIAS_ONE_LAYERS = ("conv2", "conv4", "conv5", "fc6", "fc7")

# What the paper reports for each ablation (§3.1-§4.1) ------------------------
# Error increase, in percentage points of (top-1, top-5), when the feature is removed; None: not given.
REPORTED_LRN_GAIN = (1.4, 1.2)  # §3.3: LRN lowers top-1 / top-5 error by 1.4% / 1.2%
REPORTED_OVERLAP_GAIN = (0.4, 0.3)  # §3.4: pooling 3/2 against 2/2 lowers them by 0.4% / 0.3%
REPORTED_TWO_GPU_GAIN = (1.7, 1.2)  # §3.2: two GPUs against the one-GPU half net
REPORTED_PCA_GAIN = (1.0, None)  # §4.1: PCA lighting "reduces the top-1 error rate by over 1%"
RELU_TARGET_TRAIN_ERROR = 0.25  # §3.1, Figure 1: the training error both nets are timed to
RELU_SPEEDUP = 6  # §3.1, Figure 1: ReLU gets there "six times faster" than tanh

# §6, Table 1 and Table 2: one CNN's errors (top-1, top-5), as fractions -----
REPORTED_ILSVRC2010_TEST = (0.375, 0.170)  # §6 Table 1: ILSVRC-2010 test set, one CNN
REPORTED_ILSVRC2012_VAL = (0.407, 0.182)  # §6 Table 2: ILSVRC-2012 validation set, 1 CNN

# Numbers as the paper states them, where arithmetic disagrees (§3.5, §1) ----
STATED_INPUT_SIZE = 224  # §3.5: "224x224x3 input image"
STATED_NEURONS = (253_440, 186_624, 64_896, 64_896, 43_264, 4096, 4096, 1000)  # §3.5, conv1..fc8
STATED_TOTAL_NEURONS = 650_000  # §1 / abstract: "650,000 neurons"
STATED_TOTAL_PARAMS = 60_000_000  # §1 / abstract: "60 million parameters"

LAYER_NAMES = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
