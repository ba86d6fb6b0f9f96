"""Every constant of the net and recipe the authors' own 2012 code ran, in one place, each with where it is.

The source: the Computer History Museum's release of the 2012 AlexNet code
(github.com/computerhistory/AlexNet-Source-Code, commit 2f8b81f, BSD 2-clause),
cuda-convnet's Python and CUDA with its ImageNet layer files. Run #145 is the
single CNN of the paper's Table 2 (docs/code-2012.md says why): its net is
``layers/layers-145.cfg``, its learning rates ``layers/layer-params-145.cfg``
(the file as the run left it; its comment lines 165-182 log the rates it was
started and lowered with), its data ``convdata_jpeg.py``. "cfg N" below is
layers-145.cfg line N, "params N" layer-params-145.cfg line N.

Only the constants carry over, never the code. docs/code-2012.md sets each one
beside the paper's text (paper.py) and this package's default.
"""

# The run ---------------------------------------------------------------------------------------------------
RUN = 145  # layers-145.cfg / layer-params-145.cfg
# params 182: "logprob: 1.741473, 0.406640, 0.182100" on the ILSVRC-2012 validation set after 91 epochs:
# Table 2's one CNN, 40.7% / 18.2%
REPORTED_VAL = (0.406640, 0.182100)
# layer-params-145-2010.cfg 178: the same net on ILSVRC-2010, "test multliview": Table 1's 37.5% / 17.0%
REPORTED_2010_TEST = (0.374727, 0.169987)
EPOCHS = 91  # params 181: "epoch 91: killed"

# The net (layers-145.cfg) ----------------------------------------------------------------------------------
# cfg 13, 68, 138, 166, 195: filters of each conv layer, a tower
TOWER_CONV = (48, 128, 192, 192, 128)
TOWER_FC = 2048  # cfg 241, 269: outputs of fc6 and fc7 (fc2048a, fc2048ba), a tower
CONV_PADDINGS = (0, 2, 1, 1, 1)  # cfg 14, 69, 139, 167, 196
CONV_STRIDES = (4, 1, 1, 1, 1)  # cfg 15, 70, 140, 168, 197
# cfg 17, 73, 143, 172, 200, 242, 270, 298: initW, the std of each layer's N(0, std) weights (layer.py 807)
INIT_W = (0.01, 0.01, 0.03, 0.03, 0.03, 0.01, 0.01, 0.01)
# cfg 74, 89, 173, 201, 243, 271: initB (layer.py 833: 0 where a layer names none: conv1, conv3, fc8)
INIT_B = (0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0)
# cfg 37 (rnorm1a reads conv1a) and cfg 54 (the ReLU is pool1a's): layer 1 normalises before its ReLU; cfg 77,
# 97: conv2's ReLU comes first, as §3.5 has it
NORM_BEFORE_RELU = (True, False)
# pooling: sizeX 3, stride 2 (cfg 51-52, 123-124, 224-225); layer.py 1164 rounds its output up
POOL_SIZE, POOL_STRIDE = 3, 2
# cfg 258, 286: hs layers; src/layer.cu 1126-1135: kept units unscaled, x keep at test
DROPOUT_KEEP = 0.5

# The cross-map response norms rnorm1, rnorm2 (type cmrnorm) ---------------------------------------------------
RNORM_SIZE = 5  # cfg 39, 99
# params 138, 148: as configured; layer.py 1183 divides it by size: 2e-5 is applied
RNORM_SCALE = 0.0001
RNORM_POW = 0.75  # params 139, 149
RNORM_MIN_DIV = 2.0  # params 140, 150: the k of §3.3 (layer.py 1186: 1 when a file names none)

# The within-map response norm cnorm2 (type rnorm), after rnorm2 and before pool2 (cfg 107-122) ---------------
MAP_NORM_SIZE = 5  # cfg 111: a 5x5 neighbourhood in each map
MAP_NORM_SCALE = 0.001  # params 158: layer.py 1183 divides it by size^2: 4e-5 is applied
MAP_NORM_POW = 0.75  # params 159
# cuda-convnet's kernel for rnorm adds 1 (conv_util.cu, kCNorm_*: "1 + addScale * prod"); the layer takes no
# minDiv (src/layer.cu 1568-1569)
MAP_NORM_K = 1.0

# The learning rates (layer-params-145.cfg) ------------------------------------------------------------------
# params 169: "set epsw to 0.001 from 0.01": every layer's weights started at 0.01
LEARNING_RATE = 0.01
BIAS_LEARNING_RATE = 0.02  # params 19, 27, ... 35: epsB, never lowered for conv2..fc8
MOMENTUM = 0.9  # params 4-5: momW, momB
WEIGHT_DECAY = 0.0005  # params 6: wc, on weights; src/layer.cu 565: biases are made with wc 0
BATCH_SIZE = 128  # convnet.py 177: --mini's default; no run script gives another
# params 169-181, each "epoch N: set epsw to R ...": (N, the parameters set, R). "weights": every layer's
# weights but conv1's, "conv1.weight" and "conv1.bias" its own (its epsB is 0 in the file as the run left it,
# params 3; the log names epsW only, so the bias is taken to have stopped with the weights at 72). The biases of
# conv2..fc8 keep epsB = 0.02 to the end (params 19, 27, ...).
SCHEDULE = (
    (25, ("weights", "conv1.weight"), 0.001),
    (51, ("weights", "conv1.weight"), 0.0001),
    (67, ("conv1.weight",), 0.00001),
    (72, ("conv1.weight", "conv1.bias"), 0.0),
    (79, ("weights",), 0.00001),
)
COLOUR_NOISE_OFF = 67  # params 178: "set color noise to 0 from 0.1"

# The data (convdata_jpeg.py, JPEGCroppedImageNetDP) --------------------------------------------------------
# convdata_jpeg.py 77: "This many images will be cropped in the same way" (238-246: and flipped)
CROP_CHUNK = 32
# params 178: "set color noise to 0 from 0.1" (--color-noise); convdata_jpeg.py 177-179: the noise times it is
# added, then the crop divided by 1 + it
COLOUR_NOISE = 0.1
#   the noise times it is added, then the crop divided by 1 + it
