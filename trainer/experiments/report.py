"""`alexnet-report runs/NAME`: the run's curves (curves.png) and a short summary (summary.md).

Reads only the run folder (params.json, metrics.jsonl), so it works on a copied folder, on a run
still in progress, and without torch's GPU parts. matplotlib draws with the Agg backend (no display).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import paper
from trainer import metrics
from trainer.config import REASONS, flag, paper_differences

CURVES = "curves.png"
SUMMARY = "summary.md"


PARAMS_NEEDED = ("config", "shards")


class ReportError(ValueError):
    pass


def load(run_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    run = Path(run_dir)
    params_path = run / "params.json"
    if not params_path.exists():
        raise ReportError(f"{run}: no params.json (not an alexnet-train run folder)")
    try:
        params = json.loads(params_path.read_text())
    except (OSError, ValueError) as e:
        raise ReportError(f"{params_path}: not readable JSON ({e})") from None
    missing = [k for k in PARAMS_NEEDED
               if not isinstance(params, dict) or not isinstance(params.get(k), dict)]
    if missing:
        raise ReportError(f"{params_path}: not an alexnet-train params.json (no {', '.join(missing)})")
    try:
        records = metrics.read(run)
    except (OSError, ValueError) as e:
        raise ReportError(str(e)) from None
    if not any(r["kind"] in ("train", "epoch") for r in records):
        raise ReportError(f"{run}: metrics.jsonl has no training records yet")
    return params, records


def plot(records: list[dict[str, Any]], path: Path, classes: int | None = None, title: str = "") -> None:
    """Four panels against epochs: loss (train and val), error (val, and the train top-1 error of the
    training forward passes, dropout and augmentation on; runs from before it was logged say so),
    learning rate, and speed (images/s with the share of time spent waiting for data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    train = [r for r in records if r["kind"] == "train"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    fig, ((ax_loss, ax_err), (ax_lr, ax_speed)) = plt.subplots(2, 2, figsize=(13, 8.5),
                                                               constrained_layout=True)
    if title:
        fig.suptitle(title, fontsize=11)
    # Loss against epochs (fractional for the per-step records) so train and val share an axis.
    steps_per_epoch = _steps_per_epoch(epochs)

    def at(rs: list[dict[str, Any]]) -> list[float]:
        return [r["step"] / steps_per_epoch for r in rs] if steps_per_epoch else [r["step"] for r in rs]

    if train:
        ax_loss.plot(at(train), [r["loss"] for r in train], lw=0.8, alpha=0.7,
                     label="train (per log interval)")
    if epochs:
        x = [r["epoch"] + 1 for r in epochs]
        ax_loss.plot(x, [r["train_loss"] for r in epochs], "s-", label="train (epoch mean)")
        ax_loss.plot(x, [r["val_loss"] for r in epochs], "o-", label="val (centre crop)")
        for k, c in (("1", "C0"), ("5", "C1")):
            ax_err.plot(x, [100 * r[f"val_top{k}_err"] for r in epochs], "o-", c=c,
                        label=f"val top-{k} (centre crop)")
        logged = [r for r in epochs if "train_top1_err" in r]
        if logged:
            ax_err.plot([r["epoch"] + 1 for r in logged], [100 * r["train_top1_err"] for r in logged], "s--",
                        c="C0", alpha=0.6, label="train top-1 (dropout, augmentation on)")
        else:
            ax_err.plot([], [], " ", label="train error: not logged by this run's version")
        if classes:
            ax_err.axhline(100 * (1 - 1 / classes), ls="--", c="grey", lw=1, label="top-1 chance")
        if classes == paper.NUM_CLASSES:  # ILSVRC: the paper's own result is the reference
            for err, c in ((paper.VAL_TOP1_ERR, "C0"), (paper.VAL_TOP5_ERR, "C1")):
                ax_err.axhline(100 * err, ls=":", c=c, lw=1.2)
            ax_err.plot([], [], ls=":", c="k", label="paper, 1 CNN (Table 2: 40.7 / 18.2)")
        # An epoch record's lr is read after the scheduler's step at the epoch's end: the lr the next
        # epoch runs with, so it holds from that point on (a short run without interval records shows it).
        ax_lr.plot(x, [r["lr"] for r in epochs], "o-", drawstyle="steps-post",
                   label="set at each epoch's end")
        ax_lr.set_yscale("log")
        ax_speed.plot(x, [r["images_per_s"] for r in epochs], "o-", c="C2", label="images/s (epoch)")
        ax_wait = ax_speed.twinx()
        ax_wait.plot(x, [100 * r["data_wait"] for r in epochs], "s--", c="C3", label="data wait (epoch)")
        ax_wait.set_ylabel("data wait, % of the epoch")
        ax_wait.set_ylim(0, 100)
        ax_wait.yaxis.set_major_formatter(PercentFormatter())
        ax_speed.set_ylim(bottom=0)
        h1, l1 = ax_speed.get_legend_handles_labels()
        h2, l2 = ax_wait.get_legend_handles_labels()
        ax_speed.legend(h1 + h2, l1 + l2, loc="lower right")
    final = next((r for r in reversed(records) if r["kind"] == "final"), None)
    if final and epochs:
        # Beside the last centre-crop points, not on them: hollow stars a quarter epoch to the right.
        x10 = epochs[-1]["epoch"] + 1.25
        for key, c in (("ten_crop_top1_err", "C0"), ("ten_crop_top5_err", "C1")):
            ax_err.scatter([x10], [100 * final[key]], marker="*", s=160, facecolors="none", edgecolors=c,
                           linewidths=1.5, zorder=3)
            ax_err.annotate(f"{100 * final[key]:.1f}", (x10, 100 * final[key]), xytext=(7, -3),
                            textcoords="offset points", fontsize=8, color=c)
        ax_err.scatter([], [], marker="*", s=160, facecolors="none", edgecolors="k",
                       label="10-crop, final (§6)")
        ax_err.set_xlim(right=x10 + 0.6)
    if train:
        # A train record's lr is the one its interval's steps ran with: it holds back to the previous record.
        ax_lr.plot(at(train), [r["lr"] for r in train], drawstyle="steps-pre", label="per log interval")
        ax_lr.set_yscale("log")
    xlabel = "epoch" if steps_per_epoch or not train else "step"
    for ax, name, ylabel in ((ax_loss, "loss", "cross-entropy"), (ax_err, "error", "%"),
                             (ax_lr, "learning rate", "lr"), (ax_speed, "speed", "images/s")):
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax is not ax_speed and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def title(params: dict[str, Any], run_name: str) -> str:
    """The figure's title: the run, and its settings that differ from the paper's (wrapped)."""
    import textwrap

    diffs = [_option(name, value) for name, value, _ in paper_differences(params["config"])]
    head = f"{run_name}: " + (", ".join(diffs) if diffs else "the paper's settings")
    return "\n".join(textwrap.wrap(head, 150))


def _steps_per_epoch(epochs: list[dict[str, Any]]) -> float | None:
    if not epochs:
        return None
    return epochs[0]["step"] / (epochs[0]["epoch"] + 1) if epochs[0]["step"] else None


def summary(params: dict[str, Any], records: list[dict[str, Any]], run_name: str) -> str:
    epochs = [r for r in records if r["kind"] == "epoch"]
    final = next((r for r in reversed(records) if r["kind"] == "final"), None)
    cfg = params["config"]
    machine = params.get("machine", {})
    lines = [f"# {run_name}", ""]
    cpu = f"CPU ({machine.get('cpus', '?')} cores) {machine.get('cpu', '')}".strip()
    hw = ", ".join(machine.get("gpus") or []) or cpu
    lines += [f"- epochs: {len(epochs)} of {cfg['epochs']}; steps: {records[-1].get('step', 0)}; "
              f"global batch {cfg['batch_size']} over {params.get('world_size', 1)} process(es)"
              + (" (hybrid: fc6/fc7 split across them)"
                 if cfg.get("parallel") == "hybrid" and params.get("world_size", 1) > 1 else ""),
              f"- hardware: {hw}; devices per replica: {', '.join(params.get('devices', []))}; "
              f"precision {cfg['precision']}",
              f"- git {params.get('git', 'unknown')}; train shards {params['shards']['train_hash'][:12]}, "
              f"{params['shards']['train_samples']} train / {params['shards']['val_samples']} val images, "
              f"{params['shards']['classes']} classes", ""]
    if epochs:
        last = epochs[-1]
        best1 = min(epochs, key=lambda r: r["val_top1_err"])
        best5 = min(epochs, key=lambda r: r["val_top5_err"])
        speed = sorted(r["images_per_s"] for r in epochs)[len(epochs) // 2]
        classes = params["shards"]["classes"]
        lines += [f"| validation error (centre crop) | top-1 (chance {_pct(1 - 1 / classes)}) | top-5 |",
                  "| --- | --- | --- |",
                  f"| final (epoch {last['epoch'] + 1}) | {_pct(last['val_top1_err'])} "
                  f"| {_pct(last['val_top5_err'])} |",
                  f"| best | {_pct(best1['val_top1_err'])} (epoch {best1['epoch'] + 1}) "
                  f"| {_pct(best5['val_top5_err'])} (epoch {best5['epoch'] + 1}) |"]
        if final:
            lines.append(f"| 10-crop, final (§6) | {_pct(final['ten_crop_top1_err'])} "
                         f"| {_pct(final['ten_crop_top5_err'])} |")
        lines += ["", f"- training speed: {speed:.0f} images/s (median over epochs), "
                      f"data wait {100 * last['data_wait']:.0f}% of the last epoch",
                  f"- final train loss {last['train_loss']:.4f}, val loss {last['val_loss']:.4f}, "
                  f"lr {last['lr']:.3g}",
                  f"- evaluated {last['val_samples']} val images per epoch"
                  + (" (top-5 error is 0 by construction with 5 classes or fewer)"
                     if params["shards"]["classes"] <= 5 else ""), ""]
    else:
        lines += ["No epoch finished yet.", ""]
    diffs = paper_differences(cfg)
    lines.append("## Options that differ from the paper's defaults")
    lines.append("")
    if diffs:
        for name, value, default in diffs:
            reason = REASONS.get(name, "changed")
            lines.append(f"- `{_option(name, value)}` (default `{_option(name, default)}`): {reason}")
    else:
        lines.append("- none")
    if cfg.get("note"):
        lines += ["", f"Note: {cfg['note']}"]
    lines += ["", f"![curves]({CURVES})", ""]
    return "\n".join(lines)


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _option(name: str, value: Any) -> str:
    """The command-line spelling of a setting: --no-ten-crop, --lr-milestones 30,60, --init kaiming."""
    if isinstance(value, bool):
        return f"--{'' if value else 'no-'}{flag(name)}"
    shown = ",".join(map(str, value)) if isinstance(value, list | tuple) else str(value)
    return f"--{flag(name)} {shown}"


def report(run_dir: str | Path) -> tuple[Path, Path]:
    """Write curves.png and summary.md into the run folder; returns their paths."""
    from tools import atomic

    run = Path(run_dir)
    params, records = load(run)
    png, md = run / CURVES, run / SUMMARY
    tmp = run / f".{CURVES}.tmp.png"
    try:
        text = summary(params, records, run.name)
        plot(records, tmp, classes=params["shards"].get("classes"), title=title(params, run.name))
    except (KeyError, TypeError, ValueError) as e:  # a record or setting of the wrong shape
        tmp.unlink(missing_ok=True)
        raise ReportError(f"{run}: params.json or metrics.jsonl lacks or garbles a field "
                          f"({type(e).__name__}: {e})") from None
    tmp.replace(png)
    atomic.write_bytes(str(md), text.encode())
    return png, md
