"""trainer/model.py: layer sizes, LRN formula, init, column connectivity and device crossings (CPU).

`model` (one device) runs the grouped path, `split_model` (two logical devices) Figure 2's
column-by-column path; tests that hook the per-column layers use the latter, and the two paths are
checked equal.
"""

import inspect
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import paper
from tests.tolerance import forward_rtol
from trainer.hybrid import HybridAlexNet
from trainer.model import COLS, AlexNet, LocalResponseNorm, map_sizes

BATCH = 2
PAPER_PARAMETERS = 60_965_224  # §1: "60 million parameters"; Figure 2's layers counted exactly


@pytest.fixture(scope="module")
def model() -> AlexNet:
    """Paper init, both columns on the CPU (the grouped path). Tests set train()/eval() themselves
    and leave no hooks."""
    torch.manual_seed(0)
    return AlexNet(devices=("cpu",))


@pytest.fixture(scope="module")
def split_model(model: AlexNet) -> AlexNet:
    """Two logical devices ("cpu" twice), loaded from `model`'s state dict."""
    split = AlexNet(devices=("cpu", "cpu"))
    split.load_state_dict(model.state_dict())
    return split


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.randn(BATCH, 3, paper.CROP_SIZE, paper.CROP_SIZE, generator=torch.Generator().manual_seed(1))


def run(model: AlexNet, x: torch.Tensor, capture=(), inputs=(), perturb=None) -> dict[str, torch.Tensor]:
    """Forward pass returning the outputs of the `capture` modules and the inputs of the `inputs` ones
    (named as in the state dict, e.g. "conv2.1"); `perturb` adds noise to one module's output."""
    seen, handles = {"logits": None}, []
    try:
        for name in capture:
            hook = lambda m, i, o, name=name: seen.__setitem__(name, o.detach().clone())  # noqa: E731
            handles.append(model.get_submodule(name).register_forward_hook(hook))
        for name in inputs:
            hook = lambda m, i, name=name: seen.__setitem__(name + ":in", i[0].detach().clone())  # noqa: E731
            handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
        if perturb is not None:
            noise = lambda m, i, o: o + torch.randn_like(o)  # noqa: E731
            handles.append(model.get_submodule(perturb).register_forward_hook(noise))
        with torch.no_grad():
            seen["logits"] = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_parameter_count_and_shapes(model: AlexNet) -> None:
    assert sum(p.numel() for p in model.parameters()) == PAPER_PARAMETERS
    shapes = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    assert shapes["conv1.0.weight"] == (48, 3, 11, 11)
    assert shapes["conv2.1.weight"] == (128, 48, 5, 5)  # own column only
    assert shapes["conv3.0.weight"] == (192, 256, 3, 3)  # both columns
    assert shapes["conv4.1.weight"] == (192, 192, 3, 3)
    assert shapes["conv5.0.weight"] == (128, 192, 3, 3)
    assert shapes["fc6.1.weight"] == (2048, 9216)
    assert shapes["fc7.0.weight"] == (2048, 4096)
    assert shapes["fc8.weight"] == (1000, 4096)


def test_map_sizes(split_model: AlexNet, images: torch.Tensor) -> None:
    model = split_model
    model.eval()
    pools = []
    handle = model.pool.register_forward_hook(lambda m, i, o: pools.append(tuple(o.shape[1:])))
    try:
        convs = ["conv1.0", "conv2.0", "conv3.0", "conv4.0", "conv5.0"]
        seen = run(model, images, capture=convs, inputs=["fc6.0"])
    finally:
        handle.remove()
    # The pool runs once per column: after conv1, conv2 and conv5.
    assert pools == [(48, 27, 27)] * 2 + [(128, 13, 13)] * 2 + [(128, 6, 6)] * 2
    assert seen["conv1.0"].shape[1:] == (48, 55, 55)
    assert seen["conv2.0"].shape[1:] == (128, 27, 27)
    assert seen["conv3.0"].shape[1:] == (192, 13, 13)
    assert seen["conv4.0"].shape[1:] == (192, 13, 13)
    assert seen["conv5.0"].shape[1:] == (128, 13, 13)
    assert seen["fc6.0:in"].shape == (BATCH, 2 * 128 * 6 * 6)
    assert seen["logits"].shape == (BATCH, paper.NUM_CLASSES)
    stages = [seen[f"conv{i}.0"].shape[-1] for i in (1, 2, 3, 4, 5)]
    sizes = [stages[0], pools[0][-1], stages[1], pools[2][-1], *stages[2:], pools[4][-1]]
    assert sizes == [55, 27, 27, 13, 13, 13, 13, 6]


@pytest.mark.parametrize("which, calls", [("model", 2), ("split_model", 4)])
def test_lrn_follows_relu(request, images: torch.Tensor, which: str, calls: int) -> None:
    """§3.3: "we applied this normalization after applying the ReLU nonlinearity"."""
    model = request.getfixturevalue(which)
    model.eval()
    lowest = []
    handle = model.lrn.register_forward_pre_hook(lambda m, i: lowest.append(i[0].min().item()))
    try:
        # Scaled up so that conv2, whose biases start at 1, also has negative pre-activations.
        run(model, 100 * images)
    finally:
        handle.remove()
    assert lowest == [0.0] * calls  # conv1 and conv2, each column or both at once


def lrn_by_hand(a: torch.Tensor, alpha: float) -> torch.Tensor:
    """§3.3 written out: b_i = a_i / (k + alpha * sum_{j=max(0,i-n/2)}^{min(N-1,i+n/2)} a_j^2) ** beta."""
    values = a.tolist()
    out = torch.empty_like(a)
    batch, channels, height, width = a.shape
    half = paper.LRN_SIZE // 2
    for n in range(batch):
        for i in range(channels):
            for y in range(height):
                for x in range(width):
                    window = range(max(0, i - half), min(channels - 1, i + half) + 1)
                    total = sum(values[n][j][y][x] ** 2 for j in window)
                    out[n, i, y, x] = values[n][i][y][x] / (paper.LRN_K + alpha * total) ** paper.LRN_BETA
    return out


@pytest.fixture(scope="module")
def activations() -> torch.Tensor:
    # Large enough that alpha * sum(a^2) is far from negligible next to k, as in the trained net.
    return 30 * torch.randn(2, 7, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize(
    "variant, alpha", [("paper", paper.LRN_ALPHA), ("cuda-convnet", paper.LRN_ALPHA / paper.LRN_SIZE)]
)
def test_lrn_matches_formula(activations: torch.Tensor, variant: str, alpha: float) -> None:
    got = LocalResponseNorm(variant)(activations)
    assert torch.allclose(got, lrn_by_hand(activations, alpha), rtol=1e-12, atol=0)
    # Edge channels: the window is clipped to the channels that exist, not padded by extra terms.
    a = activations[0, :, 0, 0]
    first = a[0] / (paper.LRN_K + alpha * (a[0] ** 2 + a[1] ** 2 + a[2] ** 2)) ** paper.LRN_BETA
    last = a[6] / (paper.LRN_K + alpha * (a[4] ** 2 + a[5] ** 2 + a[6] ** 2)) ** paper.LRN_BETA
    assert torch.allclose(got[0, 0, 0, 0], first, rtol=1e-12, atol=0)
    assert torch.allclose(got[0, 6, 0, 0], last, rtol=1e-12, atol=0)


def test_lrn_groups_normalise_each_column_alone(activations: torch.Tensor) -> None:
    """The grouped path's LRN over two columns' channels side by side equals each column's own LRN:
    the window of a column's edge channel does not reach into the other column."""
    lrn = LocalResponseNorm()
    both = torch.cat([activations, activations.flip(1) * 2], dim=1)
    expected = torch.cat([lrn(activations), lrn(activations.flip(1) * 2)], dim=1)
    torch.testing.assert_close(lrn(both, groups=2), expected, rtol=1e-12, atol=0)
    assert not torch.allclose(lrn(both), expected, rtol=1e-6)  # one window across both differs
    channels_last = both.to(memory_format=torch.channels_last)
    torch.testing.assert_close(lrn(channels_last, groups=2), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("groups", [1, 2])
def test_lrn_keeps_the_dtype_and_memory_format_under_bf16_autocast(groups: int) -> None:
    """Under bf16 autocast LRN returns bf16 in x's memory format (else pool1/pool2 and the next convs'
    inputs run in float32), its values those of the float32 LRN of the same bf16 inputs to a few
    bf16 roundings: each square (2^-9), the window's sum of 5 (4 x 2^-9), the divisor's cast to bf16
    (2^-9) and the division (2^-9); the 0.75 power shrinks the sum's error, so 8 x 2^-9 = 2^-6 bounds it."""
    g = torch.Generator().manual_seed(3)
    x = (30 * torch.randn(2, 96, 7, 7, generator=g)).relu().to(torch.bfloat16)
    x = x.to(memory_format=torch.channels_last)
    lrn = LocalResponseNorm()
    want = lrn(x.float().contiguous(), groups=groups)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = lrn(x, groups=groups)
    assert got.dtype == torch.bfloat16
    assert got.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(got.float(), want, rtol=2.0 ** -6, atol=0)


def test_torch_lrn_alpha_is_not_the_papers(activations: torch.Tensor) -> None:
    torch_lrn = nn.LocalResponseNorm(paper.LRN_SIZE, paper.LRN_ALPHA, paper.LRN_BETA, paper.LRN_K)
    assert not torch.allclose(torch_lrn(activations), lrn_by_hand(activations, paper.LRN_ALPHA), rtol=1e-3)
    # ... it is the cuda-convnet convention (alpha / n).
    assert torch.allclose(torch_lrn(activations), LocalResponseNorm("cuda-convnet")(activations), rtol=1e-12)


def test_paper_init(model: AlexNet) -> None:
    for name, p in model.named_parameters():
        layer = name.split(".")[0]
        if name.endswith("bias"):
            expected = 1.0 if layer in paper.INIT_BIAS_ONE else 0.0
            assert torch.all(p == expected), name
        else:
            assert abs(p.std().item() - paper.INIT_WEIGHT_STD) < 0.05 * paper.INIT_WEIGHT_STD, name
            assert abs(p.mean().item()) < 0.1 * paper.INIT_WEIGHT_STD, name
    ones = {n.split(".")[0] for n, p in model.named_parameters() if n.endswith("bias") and torch.all(p == 1)}
    assert ones == {"conv2", "conv4", "conv5", "fc6", "fc7"}


def test_kaiming_init_differs() -> None:
    torch.manual_seed(0)
    kaiming = AlexNet(devices=("cpu",), init="kaiming")
    for name, p in kaiming.named_parameters():
        if name.endswith("bias"):
            assert torch.all(p == 0), name
        elif name.startswith("conv"):
            fan_out = p.shape[0] * p.shape[2] * p.shape[3]
            assert abs(p.std().item() - math.sqrt(2 / fan_out)) < 0.05 * math.sqrt(2 / fan_out), name
            assert abs(p.std().item() - paper.INIT_WEIGHT_STD) > 0.2 * paper.INIT_WEIGHT_STD, name


def test_bad_arguments_fail_early() -> None:
    with pytest.raises(ValueError, match="init"):
        AlexNet(devices=("cpu",), init="xavier")
    with pytest.raises(ValueError, match="lrn_variant"):
        AlexNet(devices=("cpu",), lrn_variant="torch")
    with pytest.raises(ValueError, match="devices"):
        AlexNet(devices=("cpu", "cpu", "cpu"))


@pytest.mark.parametrize(
    "perturbed, unchanged, changed",
    [
        ("conv1.0", ["conv2.1"], ["conv2.0", "conv3.1"]),  # conv2 own column; conv3 sees both
        ("conv1.1", ["conv2.0"], ["conv2.1", "conv3.0"]),
        ("conv3.0", ["conv4.1", "conv5.1"], ["conv4.0", "conv5.0", "fc6.1"]),  # conv4-5 own; fc6 both
        ("fc6.0", [], ["fc7.1"]),  # fc7 sees all of fc6
        ("fc7.1", [], ["fc8"]),  # fc8 sees all of fc7
    ],
)
def test_column_connectivity(split_model, images, perturbed, unchanged, changed) -> None:
    model = split_model
    model.eval()
    torch.manual_seed(3)
    base = run(model, images, capture=unchanged + changed)
    moved = run(model, images, capture=unchanged + changed, perturb=perturbed)
    for name in unchanged:
        assert torch.equal(base[name], moved[name]), f"{name} sees {perturbed}"
    for name in changed:
        assert not torch.allclose(base[name], moved[name]), f"{name} does not see {perturbed}"


def forward_backward(model: AlexNet, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(4)  # same dropout masks
    logits = model(x)
    logits.logsumexp(dim=1).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return logits.detach(), grads


def close(got: torch.Tensor, expected: torch.Tensor, name: str, rtol: float = 1e-5) -> None:
    """Equal to `rtol` of the tensor's scale: the same sums, in other kernels (1e-5: the float64
    comparisons, ~1e7 times the rounding there)."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol * scale, msg=name)


def test_grouped_path_equals_the_two_columns(model: AlexNet, split_model: AlexNet,
                                             images: torch.Tensor) -> None:
    assert model.grouped and not split_model.grouped
    assert {k: v.shape for k, v in model.state_dict().items()} == {
        k: v.shape for k, v in split_model.state_dict().items()
    }
    # A forward pass: rounding alone, bounded from the reduction lengths (tests/tolerance.py), ~4.5e-5
    # a pass in float32. Measured: 4.8e-7 on the logits (AMD EPYC).
    model.eval(), split_model.eval()
    with torch.no_grad():
        close(model(images), split_model(images), "eval logits", forward_rtol(model, passes=2))
    # A training pass in float64 (tests/tolerance.py): in float32 the gradients of two correct kernels
    # differed by 2.4% of conv1's on an AMD EPYC, where a Xeon's happened to round alike.
    torch.manual_seed(0)
    grouped = AlexNet(devices=("cpu",), init="kaiming", dropout=0.0).double()
    split = AlexNet(devices=("cpu", "cpu"), dropout=0.0).double()
    split.load_state_dict(grouped.state_dict())
    same_training_pass(grouped, split, images.double(), forward_rtol(grouped, passes=2, dtype=torch.float64))


def same_training_pass(grouped: AlexNet, split: AlexNet, images: torch.Tensor, rtol: float) -> None:
    """One forward + backward of each: logits and every gradient equal to `rtol` of their scale."""
    grouped_logits, grouped_grads = forward_backward(grouped, images)
    split_logits, split_grads = forward_backward(split, images)
    close(grouped_logits, split_logits, "train logits", rtol)
    assert grouped_grads.keys() == split_grads.keys()
    for name, grad in split_grads.items():
        close(grouped_grads[name], grad, name, rtol)


def test_one_column_per_device() -> None:
    # "meta" stands in for a second GPU: only placement is checked, no forward pass.
    placed = AlexNet(devices=("cpu", "meta"))
    for name, p in placed.named_parameters():
        column = 0 if name.startswith("fc8") else int(name.split(".")[1])
        assert p.device.type == ("cpu", "meta")[column], name


def record_moves(monkeypatch: pytest.MonkeyPatch, net: AlexNet, events: list) -> None:
    move = net._move

    def record(x, layer, src, dst):
        events.append((layer, src, dst))
        return move(x, layer, src, dst)

    monkeypatch.setattr(net, "_move", record)


def test_crossings_only_at_conv3_fc6_fc7_fc8(monkeypatch, split_model, images) -> None:
    split_model.eval()
    calls = []
    record_moves(monkeypatch, split_model, calls)
    with torch.no_grad():
        split_model(images)
    assert calls == [
        ("input", None, 0),
        ("input", None, 1),
        ("conv3", 1, 0),
        ("conv3", 0, 1),
        ("fc6", 1, 0),
        ("fc6", 0, 1),
        ("fc7", 1, 0),
        ("fc7", 0, 1),
        ("fc8", 1, 0),  # the logits are computed, and returned, on devices[0]
    ]


def test_grouped_path_moves_only_the_input(monkeypatch, model, images) -> None:
    model.eval()
    calls = []
    record_moves(monkeypatch, model, calls)
    with torch.no_grad():
        model(images)
    assert calls == [("input", None, 0)]


def test_both_copies_are_issued_before_either_column_runs(monkeypatch, split_model, images) -> None:
    """A cross-GPU copy queues on the source GPU's stream: issued after column 0's layer it would
    wait for it (issue 8). So at each crossing both moves come before both columns' layers."""
    split_model.eval()
    events = []
    record_moves(monkeypatch, split_model, events)
    handles = [split_model.get_submodule(f"{layer}.{c}").register_forward_pre_hook(
                   lambda m, i, name=f"{layer}.{c}": events.append(name))
               for layer in ("conv3", "fc6", "fc7") for c in COLS]
    try:
        with torch.no_grad():
            split_model(images)
    finally:
        for handle in handles:
            handle.remove()
    crossing = [e for e in events if e[0] != "input" and e != ("fc8", 1, 0)]
    assert crossing == [
        ("conv3", 1, 0), ("conv3", 0, 1), "conv3.0", "conv3.1",
        ("fc6", 1, 0), ("fc6", 0, 1), "fc6.0", "fc6.1",
        ("fc7", 1, 0), ("fc7", 0, 1), "fc7.0", "fc7.1",
    ]


def assert_inverted_dropout(relu: torch.Tensor, got: torch.Tensor) -> None:
    """Inverted dropout: each live unit is zeroed or scaled by 1 / (1 - p) = 2, about half kept."""
    alive = relu > 0
    kept = got[alive] != 0
    assert 0.4 < kept.float().mean().item() < 0.6
    assert torch.allclose(got[alive][kept], relu[alive][kept] / (1 - paper.DROPOUT))


@pytest.mark.parametrize("train", [True, False])
def test_dropout_on_fc6_and_fc7_outputs_in_training_only(split_model, images, train) -> None:
    model = split_model
    model.train(train)
    torch.manual_seed(5)
    seen = run(model, images, capture=["fc6.0", "fc6.1", "fc7.0", "fc7.1"], inputs=["fc7.0", "fc7.1", "fc8"])
    for layer, receivers in (("fc6", ["fc7.0", "fc7.1"]), ("fc7", ["fc8"])):
        relu = torch.cat([seen[f"{layer}.0"], seen[f"{layer}.1"]], dim=1).clamp(min=0)
        for receiver in receivers:
            got = seen[receiver + ":in"]
            if not train:
                assert torch.equal(got, relu)
                continue
            assert_inverted_dropout(relu, got)
            assert torch.all(got[~(relu > 0)] == 0)
        if train and layer == "fc6":
            # Each column drops its own units once, before the exchange: both fc7 halves see one mask.
            assert torch.equal(seen["fc7.0:in"], seen["fc7.1:in"])


@pytest.mark.parametrize("train", [True, False])
def test_grouped_dropout_is_inverted_dropout_over_both_columns(model, images, train) -> None:
    """One mask over fc6's (and fc7's) 4096 units: each zeroed or doubled, about half kept."""
    model.train(train)
    seen = []
    handle = model.dropout.register_forward_hook(lambda m, i, o: seen.append((i[0].clone(), o.clone())))
    try:
        torch.manual_seed(5)
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    assert [tuple(i.shape) for i, _ in seen] == [(BATCH, paper.FC_WIDTH)] * 2  # fc6, fc7: both columns
    for relu, got in seen:
        if not train:
            assert torch.equal(got, relu)
            continue
        assert_inverted_dropout(relu, got)
        alive = relu > 0
        for half, half_alive in zip(got.chunk(2, dim=1), alive.chunk(2, dim=1)):  # each column's units
            assert 0.35 < (half[half_alive] != 0).float().mean().item() < 0.65


@pytest.mark.parametrize("which", ["model", "split_model"])
def test_channels_last_input(request, images: torch.Tensor, which: str) -> None:
    model = request.getfixturevalue(which)
    model.eval()
    rtol = forward_rtol(model, passes=2)  # a forward pass through other kernels (tests/tolerance.py)
    with torch.no_grad():
        expected = model(images)
        close(model(images.to(memory_format=torch.channels_last)), expected, "channels-last input", rtol)
        model.to(memory_format=torch.channels_last)
        try:
            close(model(images.to(memory_format=torch.channels_last)), expected, "channels-last model", rtol)
        finally:
            model.to(memory_format=torch.contiguous_format)


@pytest.mark.parametrize("which", ["model", "split_model"])
def test_bf16_autocast_on_cpu(request, images: torch.Tensor, which: str) -> None:
    model = request.getfixturevalue(which)
    model.eval()
    with torch.no_grad():
        expected = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(images)
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits).all()
    assert (logits.float() - expected).abs().max() < 0.05 * expected.abs().max()


@pytest.mark.slow  # ~1.5-3 min on 2 cores: inductor compiles the forward and backward graphs for the CPU
@pytest.mark.parametrize("devices", [("cpu", "cpu"), ("cpu",)], ids=["two-columns", "grouped"])
def test_compiled_model_equals_eager(images: torch.Tensor, devices: tuple[str, ...]) -> None:
    """--compile on a two-device replica (two logical CPUs: `_move` inside the graph) and on one.

    In float64: in float32 the compiled forward rounds differently (~1e-6), which is enough to flip
    a near-tie of max-pooling or a ReLU near 0 and send that unit's gradient elsewhere (measured: 2.7e-2
    of conv4.1's weight gradient at batch 2, with logits equal to 1.4e-6)."""
    eager = AlexNet(devices=devices, init="kaiming").double()
    twin = AlexNet(devices=devices, init="kaiming").double()
    twin.load_state_dict(eager.state_dict())
    compiled = torch.compile(twin)
    # Dropout off: inductor draws its masks with its own RNG, not eager's sequence.
    eager.dropout.p = twin.dropout.p = 0.0
    eager.train(), compiled.train()
    eager_logits, eager_grads = forward_backward(eager, images.double())
    logits, _ = forward_backward(compiled, images.double())
    logits, grads = forward_backward(compiled, images.double())  # the second call runs the cached graphs
    close(logits, eager_logits, "logits")
    grads = {name.removeprefix("_orig_mod."): grad for name, grad in grads.items()}
    assert grads.keys() == eager_grads.keys()
    for name, grad in eager_grads.items():
        close(grads[name], grad, name)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_grouped_path_equals_the_two_columns_on_a_gpu(images: torch.Tensor) -> None:
    """The CPU test's comparison with cuDNN/cuBLAS kernels (TF32 off; other algorithms than the
    CPU's, hence 1e-4 of each tensor's scale)."""
    torch.manual_seed(0)
    grouped = AlexNet(devices=("cuda:0",), init="kaiming")
    columns = AlexNet(devices=("cuda:0", "cuda:0"), init="kaiming")
    columns.load_state_dict(grouped.state_dict())
    grouped.dropout.p = columns.dropout.p = 0.0
    x = images.to("cuda:0")
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        got_logits, got = forward_backward(grouped, x)
        want_logits, want = forward_backward(columns, x)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    for name, a, b in [("logits", got_logits, want_logits)] + [(n, got[n], want[n]) for n in want]:
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item(), msg=name)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_column_one_does_not_wait_for_column_zeros_layer(images: torch.Tensor) -> None:
    """Issue 8: hold column 0's GPU up right after it launches conv3 (a sleep kernel queued on its
    stream); column 1's conv3 must still run at once, its input copy having been issued before."""
    import time

    cycles = 200_000_000  # ~0.1 s on a 1.5-2 GHz GPU; calibrated below
    torch.manual_seed(0)
    net = AlexNet(devices=("cuda:0", "cuda:1")).eval()
    x = images.to("cuda:0")
    with torch.no_grad():
        net(x)  # warm-up: cuDNN's algorithm choice, the allocator
    for d in (0, 1):
        torch.cuda.synchronize(d)
    start = time.perf_counter()
    with torch.cuda.device(0):
        torch.cuda._sleep(cycles)
    torch.cuda.synchronize(0)
    sleep_s = time.perf_counter() - start

    def hold(module, inputs, output):
        with torch.cuda.device(0):
            torch.cuda._sleep(cycles)

    waited = []

    def wait_for_column_one(module, inputs, output):
        start = time.perf_counter()
        torch.cuda.synchronize(1)
        waited.append(time.perf_counter() - start)

    handles = [net.conv3[0].register_forward_hook(hold),
               net.conv3[1].register_forward_hook(wait_for_column_one)]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for handle in handles:
            handle.remove()
    torch.cuda.synchronize(0)
    assert waited[0] < sleep_s / 2, f"column 1 waited {waited[0]:.3f} s behind column 0's {sleep_s:.3f} s"


# ---------------------------------------------------------------------------------------------
# The paper's ablations (norm, pool, columns, dropout): each changes exactly what it names.


def expected_parameters(columns: int, norm: str, classes: int = paper.NUM_CLASSES,
                        conv6: bool = False) -> int:
    """Counted by hand from Figure 2 (two columns) and §3.2's footnote (one column), not from the model."""
    if columns == 2:
        # (out, in per kernel, k): conv2/4/5 see their own column (48, 192, 192), conv3 both (256)
        convs = [(96, 3, 11), (256, 48, 5), (384, 256, 3), (384, 192, 3), (256, 192, 3)]
        sixth = (256, 128, 3)  # our conv6: 3x3, 128 maps per column over its own column's 128 pool5 maps
    else:
        convs = [(48, 3, 11), (128, 48, 5), (192, 128, 3), (192, 192, 3), (256, 192, 3)]
        sixth = (256, 256, 3)  # one column: conv5's 256 maps in and out
    if conv6:
        convs.append(sixth)
    fcs = [(256 * 6 * 6, 4096), (4096, 4096), (4096, classes)]  # full FC layers either way
    count = sum(o * i * k * k + o for o, i, k in convs) + sum(i * o + o for i, o in fcs)
    if norm == "batch":
        count += 2 * (convs[0][0] + convs[1][0])  # a scale and a shift per conv1 and conv2 channel
    return count


def test_the_quoted_parameter_counts_are_the_hand_counts() -> None:
    """The counts the model's docstring, the checkpoint's message and the README quote are the ones
    counted by hand above (the two-column net's is also the model's own, in test_parameter_count...)."""
    import trainer.model
    from trainer import checkpoint

    two, one = f"{expected_parameters(2, 'lrn'):,}", f"{expected_parameters(1, 'lrn'):,}"
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert two in readme and one in readme
    assert one in inspect.getsource(trainer.model)
    assert two in checkpoint.TORCHVISION


@pytest.mark.parametrize("columns", [2, 1])
@pytest.mark.parametrize("norm", ["lrn", "none", "batch"])
def test_parameter_count_of_every_norm_and_columns(norm: str, columns: int) -> None:
    model = AlexNet(devices=("cpu",), norm=norm, columns=columns)
    assert sum(p.numel() for p in model.parameters()) == expected_parameters(columns, norm)
    model = AlexNet(num_classes=6, devices=("cpu",), norm=norm, columns=columns)
    assert sum(p.numel() for p in model.parameters()) == expected_parameters(columns, norm, 6)


def shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def test_switches_change_only_what_they_name(model: AlexNet) -> None:
    default = shapes(model)
    assert model.norm == "lrn" and model.columns == 2 and model.dropout.p == paper.DROPOUT
    assert (model.pool.kernel_size, model.pool.stride) == (3, 2)

    assert shapes(AlexNet(devices=("cpu",), norm="none")) == default  # LRN has no parameters
    nonoverlap = AlexNet(devices=("cpu",), pool="nonoverlap")
    assert shapes(nonoverlap) == default  # fc6 keeps its 9216 inputs
    assert (nonoverlap.pool.kernel_size, nonoverlap.pool.stride) == (2, 2)
    dropout = AlexNet(devices=("cpu",), dropout=0.2)
    assert shapes(dropout) == default and dropout.dropout.p == 0.2

    batch = shapes(AlexNet(devices=("cpu",), norm="batch"))
    added = {k: v for k, v in batch.items() if k not in default}
    assert {k: v for k, v in batch.items() if k in default} == default
    expected = {}
    for layer, channels in (("bn1", 48), ("bn2", 128)):
        for c in COLS:
            for name in ("weight", "bias", "running_mean", "running_var"):
                expected[f"{layer}.{c}.{name}"] = (channels,)
            expected[f"{layer}.{c}.num_batches_tracked"] = ()
    assert added == expected

    one = shapes(AlexNet(devices=("cpu",), columns=1))
    assert {k.replace(".0.", ".") for k in one} == {k.replace(".0.", ".") for k in default if ".1." not in k}
    assert one["conv1.0.weight"] == (48, 3, 11, 11)
    assert one["conv3.0.weight"] == (192, 128, 3, 3)  # one column: conv3 sees its own 128 maps
    assert one["conv5.0.weight"] == (256, 192, 3, 3)  # the footnote: conv5 keeps all 256 kernels
    assert one["fc6.0.weight"] == (4096, 9216)
    assert one["fc7.0.weight"] == (4096, 4096)
    assert one["fc8.weight"] == (1000, 4096)


def pool_sides(model: AlexNet, x: torch.Tensor) -> list[int]:
    sides = []
    handle = model.pool.register_forward_hook(lambda m, i, o: sides.append(o.shape[-1]))
    try:
        run(model, x)
    finally:
        handle.remove()
    return sides


@pytest.mark.parametrize("pool", ["overlap", "nonoverlap"])
def test_both_poolings_give_figure_2s_map_sizes(pool: str, images: torch.Tensor) -> None:
    """floor((55 - z) / 2) + 1 = 27 for z = 3 and z = 2, then 13, then 6: fc6's input follows."""
    assert map_sizes(pool) == (27, 13, 6)
    model = AlexNet(devices=("cpu",), pool=pool, init="kaiming").eval()
    assert pool_sides(model, images[:1]) == [27, 13, 6]


def test_norm_none_skips_lrn_and_batch_sits_after_relu(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    none = AlexNet(devices=("cpu", "cpu"), norm="none").eval()
    calls = []
    handle = none.lrn.register_forward_hook(lambda *a: calls.append(1))
    try:
        run(none, images)
    finally:
        handle.remove()
    assert calls == []
    batch = AlexNet(devices=("cpu", "cpu"), norm="batch").eval()
    seen = run(batch, 100 * images, capture=["bn1.0", "bn2.1"], inputs=["bn1.0", "bn2.1"])
    assert seen["bn1.0:in"].min() == 0 and seen["bn2.1:in"].min() == 0  # ReLU outputs, as LRN's inputs
    assert seen["bn1.0"].shape[-1] == 55 and seen["bn2.1"].shape[-1] == 27  # before the pooling


def test_batch_norm_grouped_path_equals_the_two_columns(images: torch.Tensor) -> None:
    """Per-column BatchNorm: the grouped path normalises each column's channels with that column's
    module, in training (batch statistics, running averages updated) and in eval."""
    torch.manual_seed(0)
    grouped = AlexNet(devices=("cpu",), norm="batch", init="kaiming").double()
    split = AlexNet(devices=("cpu", "cpu"), norm="batch").double()
    split.load_state_dict(grouped.state_dict())
    for m in (grouped, split):
        m.train()
        m.dropout.p = 0.0
    images = images.double()
    rtol = forward_rtol(grouped, passes=2, dtype=torch.float64)  # a training pass: in float64
    same_training_pass(grouped, split, images, rtol)
    for name, value in split.state_dict().items():
        if name.startswith("bn"):
            close(grouped.state_dict()[name].double(), value.double(), name, rtol)
    assert split.state_dict()["bn1.1.num_batches_tracked"] == 1
    assert not torch.equal(split.bn1[0].running_mean, split.bn1[1].running_mean)  # each column its own
    grouped.eval(), split.eval()
    with torch.no_grad():
        close(grouped(images), split(images), "eval logits", rtol)


def test_one_column_net_runs_and_refuses_two_devices(images: torch.Tensor) -> None:
    model = AlexNet(devices=("cpu",), columns=1, init="kaiming").eval()
    assert run(model, images)["logits"].shape == (BATCH, paper.NUM_CLASSES)
    with pytest.raises(ValueError, match="columns=1 runs on one device"):
        AlexNet(devices=("cpu", "cpu"), columns=1)


def test_bad_switches_fail_early() -> None:
    for kwargs, match in (({"norm": "layer"}, "norm"), ({"pool": "avg"}, "pool"), ({"columns": 4}, "columns"),
                          ({"dropout": 1.0}, "dropout"), ({"dropout": -0.1}, "dropout")):
        with pytest.raises(ValueError, match=match):
            AlexNet(devices=("cpu",), **kwargs)


# ---------------------------------------------------------------------------------------------
# --activation (§3.1, Figure 1) and --conv6 (§6): each changes exactly what it names.

CONV6_TWO_COLUMNS = 2 * (3 * 3 * 128 * 128 + 128)  # 295,168: two columns of 128 3x3 kernels over 128 maps


def test_conv6_hand_count() -> None:
    assert expected_parameters(2, "lrn", conv6=True) - PAPER_PARAMETERS == CONV6_TWO_COLUMNS == 295_168
    assert expected_parameters(1, "lrn", conv6=True) - 59_798_312 == 3 * 3 * 256 * 256 + 256


@pytest.mark.parametrize("columns", [2, 1])
def test_parameter_count_with_conv6(columns: int) -> None:
    model = AlexNet(num_classes=6, devices=("cpu",), columns=columns, conv6=True)
    assert sum(p.numel() for p in model.parameters()) == expected_parameters(columns, "lrn", 6, conv6=True)


def test_conv6_adds_only_its_own_layer_before_fc6(model: AlexNet) -> None:
    default = shapes(model)
    assert not any(k.startswith("conv6") for k in default)  # off: the state dict's names are unchanged
    assert shapes(AlexNet(devices=("cpu",), conv6=False)) == default
    six = AlexNet(devices=("cpu",), conv6=True)
    got = shapes(six)
    assert {k: v for k, v in got.items() if not k.startswith("conv6")} == default
    assert {k: v for k, v in got.items() if k.startswith("conv6")} == {
        "conv6.0.weight": (128, 128, 3, 3), "conv6.0.bias": (128,),
        "conv6.1.weight": (128, 128, 3, 3), "conv6.1.bias": (128,)}
    layers = list(dict.fromkeys(k.split(".")[0] for k in got))
    assert layers == ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "fc6", "fc7", "fc8"]  # in order
    ones = {n.split(".")[0] for n, p in six.named_parameters() if n.endswith("bias") and torch.all(p == 1)}
    assert ones == {"conv2", "conv4", "conv5", "conv6", "fc6", "fc7"}


def test_conv6_sits_over_pool5_within_each_column(images: torch.Tensor) -> None:
    torch.manual_seed(0)
    split = AlexNet(devices=("cpu", "cpu"), init="kaiming", conv6=True).eval()
    pooled = []
    handle = split.pool.register_forward_hook(lambda m, i, o: pooled.append(o.detach().clone()))
    try:
        seen = run(split, images, capture=["conv6.0", "conv6.1"], inputs=["conv6.0", "conv6.1", "fc6.0"])
    finally:
        handle.remove()
    # The last two pools are pool5 of column 0 and column 1: conv6 of each column reads its own.
    assert torch.equal(seen["conv6.0:in"], pooled[-2]) and torch.equal(seen["conv6.1:in"], pooled[-1])
    assert seen["conv6.0"].shape[1:] == (128, 6, 6)
    flat = torch.cat([seen["conv6.0"].clamp(min=0).flatten(1), seen["conv6.1"].clamp(min=0).flatten(1)], 1)
    assert torch.equal(seen["fc6.0:in"], flat)  # ReLU, no pooling, then fc6's unchanged 9216 inputs
    base = run(split, images, capture=["conv6.1"])
    moved = run(split, images, capture=["conv6.1", "fc6.0"], perturb="conv6.0")
    assert torch.equal(base["conv6.1"], moved["conv6.1"])  # column 1's conv6 does not see column 0


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_activation_after_every_conv_and_hidden_fc(images: torch.Tensor, activation: str) -> None:
    # Written from their definitions, not with the model's own functions; tanh t = 1 - 2 / (e^2t + 1).
    expected = {"relu": lambda t: t.clamp(min=0), "tanh": lambda t: 1 - 2 / ((2 * t).exp() + 1)}
    f = expected[activation]
    torch.manual_seed(0)
    # norm none: each layer's input is then the pooled or plain activation of the layer before
    split = AlexNet(devices=("cpu", "cpu"), init="kaiming", norm="none", activation=activation,
                    conv6=True).eval()
    layers = ["conv1.0", "conv3.1", "conv4.0", "conv5.1", "conv6.1", "fc6.0", "fc6.1", "fc7.1"]
    inputs = ["conv2.0", "conv4.1", "conv5.0", "fc6.0", "fc7.0", "fc8"]
    seen = run(split, images, capture=layers, inputs=inputs)
    tol = {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(seen["conv2.0:in"], split.pool(f(seen["conv1.0"])), **tol)
    torch.testing.assert_close(seen["conv4.1:in"], f(seen["conv3.1"]), **tol)
    torch.testing.assert_close(seen["conv5.0:in"], f(seen["conv4.0"]), **tol)
    torch.testing.assert_close(seen["fc6.0:in"][:, 128 * 36:], f(seen["conv6.1"]).flatten(1), **tol)
    torch.testing.assert_close(seen["fc7.0:in"], f(torch.cat([seen["fc6.0"], seen["fc6.1"]], 1)), **tol)
    torch.testing.assert_close(seen["fc8:in"][:, 2048:], f(seen["fc7.1"]), **tol)
    assert (seen["fc7.0:in"].min() < 0) == (activation == "tanh")  # tanh's outputs go negative
    assert shapes(split) == shapes(AlexNet(devices=("cpu",), norm="none", conv6=True))  # no new parameters


@pytest.mark.parametrize("activation, conv6", [("tanh", True), ("relu", True), ("tanh", False)])
def test_grouped_and_hybrid_equal_the_two_columns(images: torch.Tensor, activation: str, conv6: bool) -> None:
    """The three placements of one net: grouped kernels, Figure 2's columns, and the 2014 hybrid's
    module (fc6/fc7 merged; `parallelize` only splits those two across ranks, tests/test_hybrid.py)."""
    torch.manual_seed(0)
    switches = {"dropout": 0.0, "activation": activation, "conv6": conv6}
    grouped = AlexNet(devices=("cpu",), init="kaiming", **switches).double()
    split = AlexNet(devices=("cpu", "cpu"), **switches).double()
    split.load_state_dict(grouped.state_dict())
    x = images.double()
    rtol = forward_rtol(grouped, passes=2, dtype=torch.float64)
    same_training_pass(grouped, split, x, rtol)
    grouped.eval(), split.eval()
    hybrid = HybridAlexNet(grouped).eval()
    with torch.no_grad():
        close(hybrid(x), split(x), "hybrid logits", rtol)


def test_bad_activation_fails_early() -> None:
    with pytest.raises(ValueError, match="activation"):
        AlexNet(devices=("cpu",), activation="sigmoid")
