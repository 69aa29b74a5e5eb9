"""AlexNet (Krizhevsky, Sutskever & Hinton 2012, §3 and Figure 2), split in two columns as on two GPUs.

    model = AlexNet(devices=("cuda:0", "cuda:1"))  # one column per GPU, as in the paper
    model = AlexNet(devices=("cuda:0",))           # both columns on one GPU, as grouped kernels
    logits = model(images)                          # (N, 3, 224, 224) -> (N, 1000) on devices[0]

The parameter names and shapes do not depend on `devices`, so a checkpoint moves freely between
two GPUs, one GPU and the CPU. Two devices run Figure 2 as drawn (`forward_columns`); one device
runs the same function with one kernel per layer for both columns (`forward_grouped`).

The paper's ablations are keyword arguments whose defaults are the paper's network (`norm`, `pool`,
`columns`, `dropout`, `activation`; see AlexNet), so each changes exactly the one thing it names:

    AlexNet(devices=("cuda:0",), norm="none", pool="nonoverlap", columns=1, dropout=0.0, activation="tanh")
    AlexNet(devices=("cuda:0",), conv6=True)  # §6's sixth conv layer over pool5 (CONV6_* below)
"""

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import paper

COLS = range(paper.COLUMNS)

# Padding is not in the paper. Figure 2 has 224x224 inputs and 55x55 conv1 maps, which an 11x11
# stride-4 kernel only gives with 2 pixels of padding: (224 + 2*2 - 11) // 4 + 1 = 55. conv2 (5x5)
# pads 2 and conv3-5 (3x3) pad 1 to keep Figure 2's 27x27 and 13x13 maps.
CONV_PADDING = (2, 2, 1, 1, 1)

LRN_VARIANTS = ("paper", "cuda-convnet")
INITS = ("paper", "kaiming")
NORMS = ("lrn", "none", "batch")  # §3.3 ablation: LRN, nothing, or BatchNorm in LRN's place
POOLS = {"overlap": (paper.POOL_KERNEL, paper.POOL_STRIDE), "nonoverlap": (2, 2)}  # §3.4: z=3 vs z=s=2
COLUMN_CHOICES = (2, 1)  # §3.2: two columns, or the one-column net of the footnote
# §3.1 / Figure 1: ReLU, or the saturating tanh it is compared against, after every conv and hidden FC layer.
ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"relu": F.relu, "tanh": torch.tanh}

# §6's "extra sixth convolutional layer over the last pooling layer" has no shape in the paper. Ours:
# 3x3 kernels, padding 1, as many maps as conv5 (128 per column, 256 in all), each column on its own
# pool5 maps, then the activation and no pooling. Why: "over the last pooling layer" puts it after
# pool5; 3x3 pad 1 is conv3-5's shape and keeps pool5's 6x6, and conv5's width keeps fc6's 9216
# inputs, so fc6-fc8 and every existing name and shape are unchanged; staying within the column, as
# conv4 and conv5 do, adds no crossing between the GPUs. 2 x (3*3*128*128 + 128) = 295,168 weights.
CONV6_KERNEL = 3
CONV6_PADDING = 1


def map_sizes(pool: str = "overlap") -> tuple[int, int, int]:
    """The side of the maps after pool1, pool2 and pool5 (Figure 2: 27, 13, 6). Both poolings of
    §3.4 give the same sides from conv1's 55: floor((55 - 3) / 2) + 1 = floor((55 - 2) / 2) + 1 = 27,
    then 13, then 6, so fc6 keeps its 9216 inputs; computed, not assumed."""
    kernel, stride = POOLS[pool]
    side = (paper.CROP_SIZE + 2 * CONV_PADDING[0] - paper.CONV_KERNELS[0]) // paper.CONV1_STRIDE + 1  # 55
    sides = []
    for _ in range(3):  # conv2-5 keep the side (their padding), only the pools shrink it
        side = (side - kernel) // stride + 1
        sides.append(side)
    return sides[0], sides[1], sides[2]


def column_widths(columns: int = paper.COLUMNS) -> tuple[tuple[int, int, int, int, int], int]:
    """One column's conv kernels (conv1-5) and hidden FC units.

    Two columns: half of Figure 2's each. One column: §3.2's footnote, "a net with half as many
    kernels in each convolutional layer", except that "the last convolutional layer [...] has the
    same number of kernels" and the fully-connected layers are the full 4096; 59,798,312 parameters
    with 1000 classes.
    """
    half = tuple(c // paper.COLUMNS for c in paper.CONV_CHANNELS)  # 48, 128, 192, 192, 128
    if columns == paper.COLUMNS:
        return half, paper.FC_WIDTH // paper.COLUMNS
    return (*half[:4], paper.CONV_CHANNELS[4]), paper.FC_WIDTH


class LocalResponseNorm(nn.Module):
    """§3.3: b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2) ** beta, across channels.

    variant="paper" is the formula as printed. variant="cuda-convnet" divides alpha by n, as
    Krizhevsky's released cuda-convnet does (its layer parser sets scale /= size); that is also what
    torch.nn.LocalResponseNorm(n, alpha) computes.
    """

    def __init__(
        self,
        variant: str = "paper",
        size: int = paper.LRN_SIZE,
        alpha: float = paper.LRN_ALPHA,
        beta: float = paper.LRN_BETA,
        k: float = paper.LRN_K,
    ) -> None:
        super().__init__()
        if variant not in LRN_VARIANTS:
            raise ValueError(f"lrn_variant must be one of {LRN_VARIANTS}, got {variant!r}")
        self.variant, self.size, self.alpha, self.beta, self.k = variant, size, alpha, beta, k
        # torch averages the window (alpha / n * sum a^2, zeros past the edge channels) where the
        # paper sums it, so the paper's alpha has to be passed as alpha * n.
        self.torch_alpha = alpha * size if variant == "paper" else alpha

    def forward(self, x: Tensor, groups: int = 1) -> Tensor:
        """`groups` > 1: the channels are that many columns side by side, each normalised alone
        (§3.3's window never reaches into the other GPU's kernel maps). The output has `x`'s dtype
        and memory format."""
        # F.local_response_norm's own arithmetic, with the columns as avg_pool3d's channels:
        # zero-pad each column's channels, average the window of squares, then the power. Written
        # out because F.local_response_norm returns float32 under bf16/fp16 autocast (its pow
        # autocasts to float32, and the division promotes x), which left pool1/pool2 and conv2/conv3's
        # inputs in float32, and an NCHW result for a channels-last x.
        n, c, h, w = x.shape
        div = (x * x).view(n, groups, c // groups, h, w)
        div = F.pad(div, (0, 0, 0, 0, self.size // 2, (self.size - 1) // 2))
        div = F.avg_pool3d(div, (self.size, 1, 1), stride=1).reshape(n, c, h, w)
        div = div.mul(self.torch_alpha).add(self.k).pow(self.beta).to(x.dtype)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            div = div.contiguous(memory_format=torch.channels_last)
        return x / div

    def extra_repr(self) -> str:
        return f"variant={self.variant}, size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


def _columns(make: Callable[[], nn.Module], columns: int = paper.COLUMNS) -> nn.ModuleList:
    return nn.ModuleList(make() for _ in range(columns))


# The grouped path concatenates the two columns' weights at every forward: a copy of ~57M weights
# per step (230 MB in fp32; an estimated ~0.15 ms at an H100's ~3 TB/s, against ~6 ms per step of
# 128 at the 20,000 images/s target; not measured on a GPU). The backward of the concatenation hands
# each column a slice of the gradient. Keeping the parameters per column keeps one state dict for
# every placement.


def _conv(layers: nn.ModuleList, x: Tensor, groups: int) -> Tensor:
    """Both columns' convolutions as one: weights concatenated in column order, so column 0's
    output channels come first, as in the two-column path's concatenations. groups=2 keeps each
    column on its own input channels (conv2, conv4, conv5); conv1 (one input) and conv3 (both
    columns' maps) are one full-width convolution."""
    weight = torch.cat([layer.weight for layer in layers])
    bias = torch.cat([layer.bias for layer in layers])
    return F.conv2d(x, weight, bias, layers[0].stride, layers[0].padding, groups=groups)


def _linear(layers: nn.ModuleList, x: Tensor) -> Tensor:
    """Both columns' halves of fc6 or fc7 as one full-width layer (column 0's units first)."""
    weight = torch.cat([layer.weight for layer in layers])
    return F.linear(x, weight, torch.cat([layer.bias for layer in layers]))


class AlexNet(nn.Module):
    """The eight learned layers of Figure 2; returns logits (the softmax is in the loss / evaluation).

    Each conv and hidden FC layer is a pair of half-width layers, index 0 and 1 being the two
    columns ("GPUs"). As in §3.2, conv2, conv4 and conv5 see only their own column's maps, while
    conv3, fc6, fc7 and fc8 see both: those four are the only places activations cross columns.

    devices: one entry per column, or a single entry for both (then the columns run as grouped
        kernels, `forward_grouped`). All transfers go through `_move`.
    init: "paper" (§5: weights N(0, 0.01), biases 1 in paper.INIT_BIAS_ONE, else 0) for the
        reproduction; "kaiming" (He-normal convs, N(0, 0.01) FCs, zero biases) for short CPU demos,
        where the paper's init barely moves in a few epochs.
    lrn_variant: "paper" (the §3.3 formula) or "cuda-convnet" (alpha divided by n); see LocalResponseNorm.
    norm: the normalisation after conv1's and conv2's ReLU (§3.3): "lrn" (the paper's), "none", or
        "batch": BatchNorm2d (learned scale and shift, running statistics for eval) exactly where LRN
        was, after the ReLU and before the pooling, so that the ablation changes one layer and
        nothing else around it (Ioffe & Szegedy put BN before the nonlinearity; that would also move
        the ReLU's input, a second change). Per column, as LRN: each column's BN sees only its own
        channels (`bn1.0`/`bn1.1`, `bn2.0`/`bn2.1`); per-channel statistics make that the same as one
        BN over the concatenated channels. Its scale and shift are not weight-decayed
        (trainer/build.py `make_optimizer` says why). Under torchrun each replica's BN normalises over
        its own share of the global batch (plain BatchNorm2d, not SyncBatchNorm; DDP broadcasts rank
        0's running statistics), so N processes change the statistics, unlike the rest of the recipe.
    pool: "overlap" (§3.4: 3x3 windows, stride 2) or "nonoverlap" (2x2, stride 2); both give 27, 13
        and 6 pixel maps (`map_sizes`).
    columns: 2 (Figure 2) or 1: §3.2's one-column net (`column_widths`), one device only.
    dropout: p on the outputs of fc6 and fc7 (§4.2: 0.5); 0 turns dropout off.
    activation: "relu" (§3.1) or "tanh" (Figure 1's comparison), after every conv and hidden FC
        layer. The init is left as `init` says for both, so the switch changes the non-linearity only.
    conv6: add §6's sixth conv layer over pool5 (CONV6_KERNEL; `conv6.0`/`conv6.1`, created only
        when on, so a five-conv net's state dict is unchanged). Its bias starts at 1 under the paper's
        init, as its neighbours conv4 and conv5 (§5); the paper gives conv6 no init.

    Dropout (§4.2, p=0.5 on the outputs of fc6 and fc7) is PyTorch's inverted dropout: kept units are
    scaled by 1/(1-p) = 2 at train time and nothing at test time, which gives the same expected
    activations as the paper's "multiply the outputs by 0.5" at test time.
    """

    def __init__(
        self,
        num_classes: int = paper.NUM_CLASSES,
        devices: Sequence[str | torch.device] = ("cuda:0", "cuda:1"),
        init: str = "paper",
        lrn_variant: str = "paper",
        norm: str = "lrn",
        pool: str = "overlap",
        columns: int = paper.COLUMNS,
        dropout: float = paper.DROPOUT,
        activation: str = "relu",
        conv6: bool = False,
    ) -> None:
        super().__init__()
        if len(devices) not in (1, paper.COLUMNS):
            raise ValueError(f"devices must have 1 or {paper.COLUMNS} entries, got {devices!r}")
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {tuple(POOLS)}, got {pool!r}")
        if columns not in COLUMN_CHOICES:
            raise ValueError(f"columns must be one of {COLUMN_CHOICES}, got {columns!r}")
        if columns == 1 and len(devices) != 1:
            raise ValueError(f"columns=1 runs on one device, got {devices!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        self.norm, self.columns = norm, columns
        self.activation, self.act, self.with_conv6 = activation, ACTIVATIONS[activation], bool(conv6)
        # No parameters, so one instance serves both columns on any device. Built first so a bad
        # lrn_variant fails before 61M weights are allocated.
        self.lrn = LocalResponseNorm(lrn_variant)
        self.pool = nn.MaxPool2d(*POOLS[pool])
        self.dropout = nn.Dropout(dropout)

        (c1, c2, c3, c4, c5), fc = column_widths(columns)  # 48, 128, 192, 192, 128; 2048 with 2 columns
        k1, k2, k3, k4, k5 = paper.CONV_KERNELS
        p1, p2, p3, p4, p5 = CONV_PADDING
        both = columns  # input width factor of the layers that see both columns
        side = map_sizes(pool)[2]  # 6 with either pooling: 2 * 128 * 6 * 6 = 9216 fc6 inputs

        # _init_weights sets every weight, so the layers are built on "meta" to skip torch's default
        # init, which is half the construction time on a CPU.
        with torch.device("meta"):
            self.conv1 = _columns(lambda: nn.Conv2d(3, c1, k1, paper.CONV1_STRIDE, padding=p1), columns)
            self.conv2 = _columns(lambda: nn.Conv2d(c1, c2, k2, padding=p2), columns)
            self.conv3 = _columns(lambda: nn.Conv2d(both * c2, c3, k3, padding=p3), columns)
            self.conv4 = _columns(lambda: nn.Conv2d(c3, c4, k4, padding=p4), columns)
            self.conv5 = _columns(lambda: nn.Conv2d(c4, c5, k5, padding=p5), columns)
            if conv6:  # registered before fc6, so the state dict keeps the layers in forward order
                self.conv6 = _columns(lambda: nn.Conv2d(c5, c5, CONV6_KERNEL, padding=CONV6_PADDING), columns)
            self.fc6 = _columns(lambda: nn.Linear(both * c5 * side * side, fc), columns)
            self.fc7 = _columns(lambda: nn.Linear(both * fc, fc), columns)
            self.fc8 = nn.Linear(both * fc, num_classes)
            if norm == "batch":
                self.bn1 = _columns(lambda: nn.BatchNorm2d(c1), columns)
                self.bn2 = _columns(lambda: nn.BatchNorm2d(c2), columns)

        # Initialised on the CPU before placement, so a seed gives the same weights on any devices.
        self.to_empty(device="cpu")
        self._init_weights(init)
        # Fixed here, not by where the parameters are later: a model built for two devices keeps
        # Figure 2's column-by-column forward after model.to(one device), and the reverse.
        self.grouped = len(devices) == 1
        column_devices = [torch.device(d) for d in devices] * (columns // len(devices))
        for c, device in enumerate(column_devices):
            for layers in (self.conv1, self.conv2, self.conv3, self.conv4, self.conv5, *self._conv6(),
                           self.fc6, self.fc7, *self._bns()):
                layers[c].to(device)
        self.fc8.to(column_devices[0])

    def _bns(self) -> tuple[nn.ModuleList, ...]:
        return (self.bn1, self.bn2) if self.norm == "batch" else ()

    def _conv6(self) -> tuple[nn.ModuleList, ...]:
        return (self.conv6,) if self.with_conv6 else ()

    def _named_layers(self) -> Iterator[tuple[str, nn.Module]]:
        convs = ("conv1", "conv2", "conv3", "conv4", "conv5", *("conv6",) * self.with_conv6)
        for name in (*convs, "fc6", "fc7"):
            for layer in getattr(self, name):
                yield name, layer
        yield "fc8", self.fc8

    def _init_weights(self, init: str) -> None:
        for layers in self._bns():
            for bn in layers:
                bn.reset_parameters()  # scale 1, shift 0, running mean 0 and variance 1 (torch's)
        for name, layer in self._named_layers():
            if init == "paper":
                nn.init.normal_(layer.weight, 0.0, paper.INIT_WEIGHT_STD)
                one = name in paper.INIT_BIAS_ONE or name == "conv6"  # conv6: as conv4/conv5 (class doc)
                nn.init.constant_(layer.bias, 1.0 if one else 0.0)
                continue
            # torchvision's VGG recipe: He init keeps the ReLU conv stack's activations at unit scale.
            if isinstance(layer, nn.Conv2d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            else:
                nn.init.normal_(layer.weight, 0.0, paper.INIT_WEIGHT_STD)
            nn.init.zeros_(layer.bias)

    def _move(self, x: Tensor, layer: str, src: int | None, dst: int) -> Tensor:
        """Send `x` from column `src` (None: the caller's input) to column `dst`'s device for `layer`.

        The single place tensors change device, so a test can record every crossing.
        """
        device = self.conv1[dst].weight.device  # follows the parameters, also after model.to(...)
        # Only copies into a GPU may be non_blocking: a GPU->CPU one could be read before it lands.
        return x.to(device, non_blocking=device.type == "cuda")

    def _gather(self, xs: list[Tensor], layer: str, dsts: Sequence[int] = COLS) -> list[Tensor]:
        """Both columns' activations, concatenated (column 0 first), on the device of each column
        in `dsts`. Every copy is issued before anything else: PyTorch runs a cross-GPU copy on the
        source GPU's current stream (copy_device_to_device, aten/src/ATen/native/cuda/Copy.cu), so
        a copy issued after column 0's `layer` would wait for it, and column 1 would idle meanwhile.
        """
        moved = [[x if c == dst else self._move(x, layer, c, dst) for c, x in enumerate(xs)] for dst in dsts]
        return [torch.cat(parts, dim=1) for parts in moved]

    def _normalise(self, x: Tensor, layer: int, column: int | None = None) -> Tensor:
        """`norm` after conv`layer`'s ReLU (1 or 2): on one column's maps, or (column None, the
        grouped path) on all columns' maps side by side, each column normalised alone."""
        if self.norm == "none":
            return x
        if self.norm == "lrn":
            return self.lrn(x) if column is not None else self.lrn(x, groups=self.columns)
        bns = self.bn1 if layer == 1 else self.bn2
        if column is not None:
            return bns[column](x)
        if len(bns) == 1:
            return bns[0](x)
        # Each column's own module on its channel slice, so its running statistics are updated in place.
        return torch.cat([bn(part) for bn, part in zip(bns, x.chunk(len(bns), dim=1), strict=True)], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_grouped(x) if self.grouped else self.forward_columns(x)

    def forward_columns(self, x: Tensor) -> Tensor:
        """Figure 2 as drawn, one column per device. Each step launches column 0's then column 1's
        kernels; CUDA launches are asynchronous, so with two GPUs both columns run at once. Nothing
        here waits on a GPU (no .item(), no sync)."""
        x = [self._move(x, "input", None, c) for c in COLS]
        # §3.3-3.4: ReLU, then response normalisation, then overlapping max-pooling.
        act = self.act
        x = [self.pool(self._normalise(act(self.conv1[c](x[c])), 1, c)) for c in COLS]
        x = [self.pool(self._normalise(act(self.conv2[c](x[c])), 2, c)) for c in COLS]
        x = self._gather(x, "conv3")
        x = [act(self.conv3[c](x[c])) for c in COLS]
        x = [act(self.conv4[c](x[c])) for c in COLS]
        x = [self.pool(act(self.conv5[c](x[c]))) for c in COLS]
        if self.with_conv6:  # over pool5, within each column
            x = [act(self.conv6[c](x[c])) for c in COLS]
        x = self._gather([torch.flatten(v, 1) for v in x], "fc6")
        x = [self.dropout(act(self.fc6[c](x[c]))) for c in COLS]
        x = self._gather(x, "fc7")
        x = [self.dropout(act(self.fc7[c](x[c]))) for c in COLS]
        return self.fc8(self._gather(x, "fc8", dsts=[0])[0])

    def forward_grouped(self, x: Tensor) -> Tensor:
        """The same function on one device, one kernel per layer for both columns: the activations
        are the two columns' concatenated (column 0's channels first), which is what the two-column
        path's `_gather` builds, so the crossing layers need no copy of activations at all.

        Dropout draws one mask over both columns' units where the two-column path draws one per
        column: the same distribution (independent Bernoulli(0.5) per unit), another RNG sequence.
        """
        x = self.features_grouped(x)
        x = self.dropout(self.act(_linear(self.fc6, x)))
        x = self.dropout(self.act(_linear(self.fc7, x)))
        return self.fc8(x)

    def features_grouped(self, x: Tensor) -> Tensor:
        """The convolutional trunk of `forward_grouped`: images to fc6's 9216 inputs (pool5, or conv6
        over it, flattened). Also the data-parallel part of the 2014 hybrid scheme (trainer/hybrid.py)."""
        x = self._move(x, "input", None, 0)
        g, act = self.columns, self.act  # g = 1 for the one-column net: every layer is then a plain one
        x = self.pool(self._normalise(act(_conv(self.conv1, x, groups=1)), 1))
        x = self.pool(self._normalise(act(_conv(self.conv2, x, groups=g)), 2))
        x = act(_conv(self.conv3, x, groups=1))
        x = act(_conv(self.conv4, x, groups=g))
        x = self.pool(act(_conv(self.conv5, x, groups=g)))
        if self.with_conv6:
            x = act(_conv(self.conv6, x, groups=g))
        # Flattening channel by channel keeps column 0's 128 x 6 x 6 values first, as the columns' cat.
        return torch.flatten(x, 1)
