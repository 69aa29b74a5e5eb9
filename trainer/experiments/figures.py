"""`alexnet-figures RUN --shards DIR`: the paper's Figures 3 and 4 (§6.1) from a run's latest checkpoint.

- figure3.png: the 96 conv1 kernels, one column's 48 per block, each 11x11x3 kernel scaled to [0, 1]
  for display; and per column a colourfulness score, because §6.1 reports that column 1 ("GPU 1")
  learned largely colour-agnostic kernels and column 2 colour-specific ones, in every run.
- figure4.png: a few validation images with their top-5 classes as bars (the true class in red), and
  beside each the 6 training images whose fc7 activations (4096-d, after ReLU: the last hidden layer)
  are nearest by Euclidean distance (§6.1). The features come from one pass over the training shards
  (centre crops, in shard order, `max_train` at most), batched on the model's device; the nearest
  images are kept on the fly, so memory does not grow with the training set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import paper

FIGURE3 = "figure3.png"
FIGURE4 = "figure4.png"
NEIGHBOURS = 6  # §6.1 / Figure 4: "the six training images that produce feature vectors ... closest"
TOP = 5  # Figure 4 shows the top-5 predictions


class FigureError(ValueError):
    """A run or shard folder the figures cannot be made from; the message is one line."""


# --- Figure 3 ----------------------------------------------------------------------------------------

def conv1_kernels(model: nn.Module) -> list[np.ndarray]:
    """Each column's conv1 kernels, [K, 3, 11, 11] float32, in column order (one block for a
    single-column network, whether its conv1 is a list of one layer or the layer itself)."""
    layers = model.conv1 if isinstance(model.conv1, nn.ModuleList) else [model.conv1]
    return [layer.weight.detach().float().cpu().numpy() for layer in layers]


def display(kernels: np.ndarray) -> np.ndarray:
    """Each kernel scaled to [0, 1] over its own three channels, as [K, h, w, 3] RGB: one min and
    max per kernel, so the balance of its colours is kept."""
    k = kernels.reshape(len(kernels), -1)
    lo, hi = k.min(1), k.max(1)
    scaled = (kernels - lo[:, None, None, None]) / np.maximum(hi - lo, 1e-12)[:, None, None, None]
    return scaled.transpose(0, 2, 3, 1)


def colourfulness(kernels: np.ndarray) -> float:
    """Mean chroma of the kernels as displayed: per pixel, max(R, G, B) - min(R, G, B) (HSV's chroma)
    of the [0, 1]-scaled kernel, averaged over pixels and kernels. 0 for kernels with equal weights on
    the three channels (grey: they respond to luminance only), up to 1 for saturated primaries."""
    rgb = display(kernels)
    return float((rgb.max(-1) - rgb.min(-1)).mean())


def mosaic(kernels: np.ndarray, per_row: int = 16, gap: int = 1) -> np.ndarray:
    """The kernels as display RGB tiles in rows of `per_row`, `gap` white pixels between them."""
    images = display(kernels)
    k, h, w, _ = images.shape
    rows = -(-k // per_row)
    out = np.ones((rows * (h + gap) - gap, per_row * (w + gap) - gap, 3))
    for i, image in enumerate(images):
        r, c = divmod(i, per_row)
        out[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = image
    return out


def figure3(columns: list[np.ndarray], path: Path) -> list[float]:
    """Draw the kernels, one block per column (3 rows of 16 each for 96 kernels, as in the paper);
    returns each column's colourfulness."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = [colourfulness(k) for k in columns]
    blocks = [mosaic(k) for k in columns]
    height = 10 * sum(b.shape[0] for b in blocks) / blocks[0].shape[1] + 0.5 * len(blocks)
    fig, axes = plt.subplots(len(blocks), 1, figsize=(10, height), squeeze=False, constrained_layout=True)
    for c, (block, ax) in enumerate(zip(blocks, axes[:, 0])):
        ax.imshow(block, interpolation="nearest")
        ax.set_axis_off()
        size = "x".join(map(str, columns[c].shape[2:]))
        ax.set_title(f"column {c + 1} (\"GPU {c + 1}\"): {len(columns[c])} conv1 kernels {size}x3, "
                     f"colourfulness {scores[c]:.3f}", fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return scores


# --- Figure 4 ----------------------------------------------------------------------------------------

class Fc7:
    """The last hidden layer's activations (fc7 after ReLU and dropout, i.e. after ReLU in eval mode):
    the input of fc8, caught by a forward pre-hook. fc8 is one nn.Linear called as a module in both the
    two-column and the grouped path, so the hook sees the full 4096-d vector (column 0's units first)
    whatever the placement, where fc7's own modules are not called on the grouped path."""

    def __init__(self, model: nn.Module) -> None:
        self.out: Tensor | None = None
        self.handle = model.fc8.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple[Tensor, ...]) -> None:
        self.out = args[0]

    def close(self) -> None:
        self.handle.remove()


class Nearest:
    """The k items nearest to each query (Euclidean), over batches added one after another.

    Keeps, per query, the k smallest distances seen so far, the global indices of their items and,
    if given, the items themselves (images), merging each batch in on the queries' device.
    """

    def __init__(self, queries: Tensor, k: int) -> None:
        self.queries, self.k = queries.float(), k
        q = len(queries)
        self.dist = queries.new_zeros((q, 0), dtype=torch.float32)
        self.index = torch.zeros((q, 0), dtype=torch.int64, device=queries.device)
        self.items: Tensor | None = None

    def add(self, feats: Tensor, index: Tensor, items: Tensor | None = None) -> None:
        # Direct differences, not cdist's matmul form (|a|^2 - 2ab + |b|^2), which loses precision and
        # could reorder near neighbours; with a handful of queries the cost is small.
        d = torch.cdist(self.queries, feats.float(), compute_mode="donot_use_mm_for_euclid_dist")
        dist = torch.cat([self.dist, d], 1)
        index = torch.cat([self.index, index.to(self.index.device)[None].expand(len(d), -1)], 1)
        top = dist.topk(min(self.k, dist.shape[1]), dim=1, largest=False)
        old = self.dist.shape[1]
        if items is not None:
            # Positions < old are kept items (query q's j-th at q * old + j), the rest this batch's.
            pool = items if self.items is None else torch.cat([self.items.flatten(0, 1), items])
            q = torch.arange(len(d), device=d.device)[:, None]
            flat = torch.where(top.indices < old, q * old + top.indices,
                               len(d) * old + top.indices - old)
            self.items = pool[flat]
        self.dist, self.index = top.values, index.gather(1, top.indices)


@dataclass
class Query:
    index: int  # position in the val split
    image: np.ndarray  # [224, 224, 3] uint8
    label: int
    probs: np.ndarray  # [classes] softmax
    neighbours: list[np.ndarray]  # NEIGHBOURS training images, nearest first
    neighbour_index: list[int]  # their positions in the train split (shard order)
    neighbour_labels: list[int]


def features(model: nn.Module, batches: Iterable[Any], device: torch.device,
             limit: int | None = None) -> Iterable[tuple[Tensor, Tensor, Tensor, Tensor, Tensor]]:
    """(images, labels, logits, fc7, global index) per batch, padding removed, at most `limit` images."""
    from trainer.evaluate import unpack

    hook = Fc7(model)
    seen = 0
    try:
        with torch.no_grad():
            for batch in batches:
                images, labels, valid = unpack(batch)
                if limit is not None and seen >= limit:
                    break
                keep = valid.nonzero().flatten()
                if limit is not None:
                    keep = keep[: limit - seen]
                images, labels = images[keep.to(images.device)].to(device), labels[keep.to(labels.device)]
                logits = model(images.float())
                idx = torch.arange(seen, seen + len(keep), device=device)
                seen += len(keep)
                yield images, labels.to(device), logits, hook.out, idx
    finally:
        hook.close()


def pick(n: int, count: int) -> list[int]:
    """`count` positions spread evenly over n (the val split is in file order, mixed classes)."""
    return sorted(set(np.linspace(0, n - 1, min(count, n)).round().astype(int).tolist()))


def find_neighbours(model: nn.Module, val: Iterable[Any], train: Iterable[Any], device: torch.device,
                    picked: list[int], to_pixels: Callable[[Tensor], np.ndarray],
                    max_train: int | None = None, k: int = NEIGHBOURS) -> list[Query]:
    """The picked val images, their predictions, and their k nearest training images by fc7."""
    model.eval()
    wanted = torch.tensor(picked, device=device)
    q_images, q_labels, q_probs, q_feats = [], [], [], []
    for images, labels, logits, fc7, idx in features(model, val, device):
        sel = torch.isin(idx, wanted)
        if sel.any():
            q_images.append(images[sel]); q_labels.append(labels[sel])  # noqa: E702
            q_probs.append(logits[sel].softmax(1)); q_feats.append(fc7[sel])  # noqa: E702
    if not q_feats:
        raise FigureError("no validation image to show")
    nearest = Nearest(torch.cat(q_feats), k)
    train_labels = []
    for images, labels, _, fc7, idx in features(model, train, device, limit=max_train):
        nearest.add(fc7, idx, images)
        train_labels.append(labels.cpu())
    if nearest.items is None:
        raise FigureError("no training image to compare with")
    all_labels = torch.cat(train_labels).numpy()
    images, labels, probs = torch.cat(q_images), torch.cat(q_labels), torch.cat(q_probs)
    out = []
    for i in range(len(images)):
        index = nearest.index[i].tolist()
        out.append(Query(index=picked[i], image=to_pixels(images[i:i + 1])[0], label=int(labels[i]),
                         probs=probs[i].float().cpu().numpy(), neighbours=list(to_pixels(nearest.items[i])),
                         neighbour_index=index, neighbour_labels=[int(all_labels[j]) for j in index]))
    return out


def figure4(queries: list[Query], names: list[str], path: Path) -> None:
    """One row per val image: the image with its true class, its top-5 as bars (the true class in
    red, as in the paper), then its nearest training images, nearest first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = max(len(q.neighbours) for q in queries)
    fig, axes = plt.subplots(len(queries), 2 + k, figsize=(2.0 * (3 + k), 2.1 * len(queries)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 2] + [1] * k}, constrained_layout=True)
    for row, q in zip(axes, queries):
        row[0].imshow(q.image)
        row[0].set_title(f"val {q.index}\n{names[q.label]}", fontsize=8)
        top = np.argsort(-q.probs)[:TOP]
        colours = ["tab:red" if c == q.label else "tab:blue" for c in top]
        row[1].barh(range(len(top)), q.probs[top], color=colours)
        row[1].set_yticks(range(len(top)), [names[c] for c in top], fontsize=8)
        row[1].invert_yaxis()
        row[1].set_xlim(0, 1)
        row[1].tick_params(axis="x", labelsize=7)
        row[1].set_title("top-5 (red: true class)", fontsize=8)
        for j, ax in enumerate(row[2:]):
            if j < len(q.neighbours):
                ax.imshow(q.neighbours[j])
                ax.set_title(f"train {q.neighbour_index[j]}\n{names[q.neighbour_labels[j]]}", fontsize=7)
        for ax in (row[0], *row[2:]):
            ax.set_xticks([]), ax.set_yticks([])  # noqa: B018 - a frame without ticks
            if not ax.images:
                ax.set_axis_off()
    fig.suptitle(f"validation images, their top-5, and the {k} training images nearest by fc7 "
                 "(4096-d, Euclidean), nearest first", fontsize=10)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def class_names(manifest: dict[str, Any]) -> list[str]:
    """Short, distinct class names: the devkit's first synonym ("tench" of "tench, Tinca tinca"); the
    first two where the first is shared (ImageNet has two "crane"s and two "maillot"s); the wnid added
    where those are shared too; the wnid alone without words."""
    words = [[w.strip() for w in (c.get("words") or "").split(",") if w.strip()] for c in manifest["classes"]]
    names = []
    for c, w in zip(manifest["classes"], words):
        if not w:
            names.append(c["wnid"])
            continue
        for n in (1, 2):
            name = ", ".join(w[:n])
            if sum(", ".join(o[:n]) == name for o in words) == 1:
                break
        else:
            name = f"{w[0]} ({c['wnid']})"
        names.append(name)
    return names


# --- the command -------------------------------------------------------------------------------------

def main(run_dir: str, shards: str, images: int = 5, max_train: int | None = None, batch_size: int = 128,
         device: str | None = None, echo: Callable[[str], None] = print) -> tuple[Path, Path]:
    """Write figure3.png and figure4.png into the run folder; raises FigureError."""
    import dataclasses

    import pipeline
    from pipeline.stats import load as load_stats
    from trainer import build, checkpoint, startup
    from trainer.config import ConfigError, TrainConfig

    run = Path(run_dir)
    try:
        found = checkpoint.load_latest(run)
    except checkpoint.CheckpointError as e:
        raise FigureError(str(e)) from None
    if found is None:
        raise FigureError(f"{run}: no checkpoint (not an alexnet-train run folder, or no step finished)")
    state = found[0]
    try:
        manifest = startup.check_shards(shards)
    except ConfigError as e:
        raise FigureError(str(e)) from None
    if state["num_classes"] != len(manifest["classes"]):
        raise FigureError(f"--shards: the checkpoint has {state['num_classes']} classes, "
                          f"{shards} has {len(manifest['classes'])}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    # The network the run trained (its switches included), from its saved settings.
    cfg = dataclasses.replace(TrainConfig.from_dict(state["config"]), channels_last=False)
    model = build.build_model(cfg, state["num_classes"], (str(dev),))
    model.load_state_dict(state["model"])
    model.eval()

    png3 = run / FIGURE3
    tmp = run / f".{FIGURE3}.tmp.png"
    scores = figure3(conv1_kernels(model), tmp)
    tmp.replace(png3)
    for c, s in enumerate(scores):
        echo(f"column {c + 1}: colourfulness {s:.3f} (mean chroma of its conv1 kernels, 0 = grey)")
    if len(scores) == 2:
        echo("§6.1: in the paper, column 1's kernels come out largely colour-agnostic, "
             "column 2's colour-specific")

    gpu = dev.type == "cuda"
    args = dict(batch_size=batch_size, device="gpu" if gpu else "cpu", crop="center", mean=cfg.mean,
                dtype="float32", device_id=(dev.index or 0) if gpu else None)
    try:
        val = pipeline.eval_loader(shards, split="val", **args)
        train_batches = pipeline.eval_loader(shards, split="train", **args)
        stats = load_stats(shards, mean_image=cfg.mean == "image")
    except pipeline.PipelineError as e:
        raise FigureError(f"--shards: {e}") from None
    crop = paper.CROP_SIZE
    if cfg.mean == "image":
        off = (stats.mean_image.shape[0] - crop) // 2  # the centre crop's offset (eval_loader: pos 0.5)
        mean = torch.from_numpy(stats.mean_image[off:off + crop, off:off + crop].transpose(2, 0, 1).copy())
        std = torch.ones(3, 1, 1)
    else:
        mean = torch.tensor(stats.mean, dtype=torch.float32)[:, None, None]
        std = torch.tensor(stats.std, dtype=torch.float32)[:, None, None]

    def to_pixels(x: Tensor) -> np.ndarray:
        """Undo the loader's normalisation: [N, 3, 224, 224] -> [N, 224, 224, 3] uint8 RGB."""
        x = x.float().cpu() * std + mean
        return x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()

    picked = pick(manifest["splits"]["val"]["samples"], images)
    try:
        queries = find_neighbours(model, val, train_batches, dev, picked, to_pixels, max_train)
    except pipeline.PipelineError as e:  # a shard that broke mid-pass: the loader names it
        raise FigureError(f"--shards: {e}") from None
    png4 = run / FIGURE4
    tmp = run / f".{FIGURE4}.tmp.png"
    figure4(queries, class_names(manifest), tmp)
    tmp.replace(png4)
    return png3, png4
