"""Every number taken from Krizhevsky, Sutskever & Hinton (2012), with the section it comes from.

The rest of the code imports these names instead of repeating the literals, so a reader can
check the reproduction against the paper in one place.
"""

# §2 (The Dataset): images are down-sampled so the shorter side is 256, then the central
# 256x256 patch is kept.
STORED_SIZE = 256

# §4.1 (Data Augmentation): random 224x224 patches and their horizontal reflections.
CROP_SIZE = 224
FLIP_PROBABILITY = 0.5

# §4.1: PCA lighting, alpha_i ~ N(0, 0.1) drawn once per image each time it is used.
LIGHTING_STD = 0.1

# §3.3 (Local Response Normalization): b = a / (k + alpha * sum a^2) ** beta over n channels.
LRN_K = 2.0
LRN_SIZE = 5
LRN_ALPHA = 1e-4
LRN_BETA = 0.75

# §3.4 (Overlapping Pooling): z x z = 3x3 windows with stride s = 2.
POOL_KERNEL = 3
POOL_STRIDE = 2

# §4.2 (Dropout): p = 0.5 on the first two fully connected layers.
DROPOUT = 0.5

# §5 (Details of learning).
BATCH_SIZE = 128
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
LEARNING_RATE = 0.01
LR_DROP_FACTOR = 0.1  # "divided the learning rate by 10 when the validation error rate stopped improving"
LR_DROPS = 3  # "reduced three times prior to termination"
EPOCHS = 90  # "roughly 90 cycles through the training set"
INIT_WEIGHT_STD = 0.01  # zero-mean Gaussian, standard deviation 0.01
INIT_BIAS_ONE = ("conv2", "conv4", "conv5", "fc6", "fc7")  # "constant 1"; all others 0

# §6 (Results) / §4.1: test-time prediction averages the softmax over ten 224x224 patches:
# the four corners and the centre, and their horizontal reflections.
TEN_CROP = 10
# §6, Table 2: one CNN's ILSVRC-2012 validation error, the figure a faithful single run aims at.
VAL_TOP1_ERR, VAL_TOP5_ERR = 0.407, 0.182

# §3.5 / Figure 2: the layer widths, split in two columns ("GPUs").
NUM_CLASSES = 1000
CONV_CHANNELS = (96, 256, 384, 384, 256)
CONV_KERNELS = (11, 5, 3, 3, 3)  # 11x11x3, 5x5x48, 3x3x256, 3x3x192, 3x3x192
CONV1_STRIDE = 4  # "with a stride of 4 pixels"
COLUMNS = 2  # §3.2: half of the kernels (or neurons) on each of two GPUs
FC_WIDTH = 4096

# The paper's controlled claims: one change to the network or the training, and what it did to the
# error rates (percentage points, positive = the change raised the error). `alexnet-report --compare`
# sets a run's measured difference from its baseline beside these; trainer/experiments/compare.py reads them.
# (switch, value the paper's claim is about, section, top-1 points, top-5 points, the paper's words)
CLAIMS = (
    ("norm", "none", "§3.3", 1.4, 1.2, "Response normalization reduces our top-1 and top-5 error rates by "
     "1.4% and 1.2%, respectively."),
    ("pool", "nonoverlap", "§3.4", 0.4, 0.3, "This scheme reduces the top-1 and top-5 error rates by 0.4% "
     "and 0.3%, respectively, as compared with the non-overlapping scheme s = 2, z = 2"),
    ("columns", 1, "§3.2", 1.7, 1.2, "This scheme reduces our top-1 and top-5 error rates by 1.7% and 1.2%, "
     "respectively, as compared with a net with half as many kernels in each convolutional layer trained "
     "on one GPU."),
    # "over 1%": a lower bound on top-1, no top-5 figure.
    ("lighting", "off", "§4.1", 1.0, None, "This scheme reduces the top-1 error rate by over 1%."),
    ("dropout", 0.0, "§4.2", None, None, "Without dropout, our network exhibits substantial overfitting."),
    ("augment", "none", "§4.1", None, None, "Without this scheme, our network suffers from substantial "
     "overfitting"),
    # A claim about training speed, not error: Figure 1 (CIFAR-10) is its measurement, `alexnet-figure1`.
    ("activation", "tanh", "§3.1", None, None, "Deep convolutional neural networks with ReLUs train several "
     "times faster than their equivalents with tanh units."),
)

# §3.1, Figure 1: "A four-layer convolutional neural network with ReLUs (solid line) reaches a 25%
# training error rate on CIFAR-10 six times faster than an equivalent network with tanh neurons
# (dashed line)." No regularization; each network's learning rate chosen for the fastest training.
FIGURE1_TARGET_ERR = 0.25
FIGURE1_SPEEDUP = 6

# §6, Table 1: ILSVRC-2010 test set, (model, top-1 error, top-5 error). The CNN's figures average the
# softmax over the ten patches of §4.1, as `alexnet-eval --ten-crop` does.
TABLE1 = (("Sparse coding", 0.471, 0.282), ("SIFT + FVs", 0.457, 0.257), ("CNN", 0.375, 0.170))
# §6, Table 2: ILSVRC-2012, (model, top-1 val, top-5 val, top-5 test); None where the paper has "–".
# "*" marks the nets pre-trained on ImageNet Fall 2011 with a sixth conv layer, then fine-tuned.
TABLE2 = (("SIFT + FVs", None, None, 0.262), ("1 CNN", 0.407, 0.182, None), ("5 CNNs", 0.381, 0.164, 0.164),
          ("1 CNN*", 0.390, 0.166, None), ("7 CNNs*", 0.367, 0.154, 0.153))
