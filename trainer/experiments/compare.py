"""`alexnet-report --compare BASELINE RUN ...`: one table of several runs, their differences from the
first, and the paper's claimed differences beside them (compare.md, compare.png).

Reads only run folders (params.json, metrics.jsonl), like `alexnet-report`. The paper's switches
(`norm`, `pool`, `columns`, `dropout`, `lighting`, `augment`, `activation`) are read from params.json's
config with the paper's defaults when absent, so runs made before those switches existed compare as the
paper's network.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paper
from trainer.config import TrainConfig, paper_differences
from trainer.experiments.report import ReportError, _option, _pct, load

COMPARE_MD = "compare.md"
COMPARE_PNG = "compare.png"

# The switches of the paper's ablations and their defaults (the paper's network and training).
SWITCHES: dict[str, Any] = {"norm": "lrn", "pool": "overlap", "columns": 2, "dropout": paper.DROPOUT,
                            "lighting": "paper01", "augment": "full", "activation": "relu"}
# Settings that do not change what a run measures, so two runs differing only in them still compare.
IGNORED = {"shards", "out", "resume", "note", "progress", "devices", "log_every", "checkpoint_every",
           "compile", "channels_last"}


@dataclass(frozen=True)
class Claim:
    switch: str
    value: Any
    section: str
    top1: float | None  # points of error the change added in the paper; None: no figure given
    top5: float | None
    words: str

    def shown(self) -> str:
        if self.top1 is None:
            return f"{self.section}: \"{self.words}\" (no figure)"
        if self.top5 is None:
            return f"{self.section}: top-1 +{self.top1:.1f} or more"
        return f"{self.section}: +{self.top1:.1f} / +{self.top5:.1f}"


CLAIMS = tuple(Claim(*c) for c in paper.CLAIMS)


@dataclass(frozen=True)
class Row:
    name: str
    switches: dict[str, Any]
    settings: dict[str, Any]  # the config, less IGNORED
    differences: list[str]  # options that differ from the paper's defaults, command-line spelling
    top1: float | None  # final epoch, centre crop (fractions)
    top5: float | None
    ten_top1: float | None  # final 10-crop (§6)
    ten_top5: float | None
    best_epoch: int | None  # 1-based, lowest centre-crop top-1
    images_per_s: float | None  # median over epochs
    epochs: int
    gap: float | None  # last epoch's val loss minus train loss: §4.1/§4.2's "overfitting" has no figure


def _defaults() -> dict[str, Any]:
    """TrainConfig's defaults as params.json spells them (tuples as lists), for the settings an older
    run does not record: a setting added later must not read as a difference between two runs."""
    out = {}
    for f in dataclasses.fields(TrainConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = list(f.default) if isinstance(f.default, tuple) else f.default
    return out


def switches(config: dict[str, Any]) -> dict[str, Any]:
    """The paper's switches of a run's config, defaults for those it does not record."""
    return {k: config.get(k, default) for k, default in SWITCHES.items()}


def row(run_dir: str | Path) -> Row:
    run = Path(run_dir)
    params, records = load(run)
    config = params.get("config", {})
    epochs = [r for r in records if r["kind"] == "epoch"]
    final = next((r for r in reversed(records) if r["kind"] == "final"), None)
    sw = switches(config)
    diffs = [_option(name, value) for name, value, _ in paper_differences(config)]
    shown = {d.split()[0] for d in diffs}
    diffs += [_option(k, v) for k, v in sw.items()
              if v != SWITCHES[k] and _option(k, v).split()[0] not in shown]
    if config.get("seed", 0) != 0:  # not a paper setting, but what tells two otherwise equal runs apart
        diffs.append(_option("seed", config["seed"]))
    last = epochs[-1] if epochs else {}
    best = min(epochs, key=lambda r: r["val_top1_err"]) if epochs else None
    speeds = sorted(r["images_per_s"] for r in epochs)
    return Row(name=run.name, switches=sw,
               settings={k: v for k, v in {**_defaults(), **config}.items()
                         if k not in IGNORED and k not in SWITCHES},
               differences=diffs, top1=last.get("val_top1_err"), top5=last.get("val_top5_err"),
               ten_top1=final.get("ten_crop_top1_err") if final else None,
               ten_top5=final.get("ten_crop_top5_err") if final else None,
               best_epoch=best["epoch"] + 1 if best else None,
               images_per_s=speeds[len(speeds) // 2] if speeds else None, epochs=len(epochs),
               gap=last["val_loss"] - last["train_loss"] if last else None)


def claim_for(base: Row, run: Row) -> tuple[Claim | None, list[str]]:
    """The paper's claim that `run` against `base` tests, if any, and the other settings in which they
    differ (a claim holds only all else equal, so those are shown beside it)."""
    changed = [k for k in SWITCHES if run.switches[k] != base.switches[k]]
    others = sorted(k for k in set(base.settings) | set(run.settings)
                    if base.settings.get(k) != run.settings.get(k))
    if len(changed) != 1:
        return None, others
    k = changed[0]
    if base.switches[k] != SWITCHES[k]:
        return None, others
    claim = next((c for c in CLAIMS if c.switch == k and c.value == run.switches[k]), None)
    return claim, others


def _errors(r: Row) -> tuple[float | None, float | None, str]:
    """The errors a difference is taken on: 10-crop when the run has it (the paper's test-time
    scheme, §6), else the last centre-crop validation."""
    if r.ten_top1 is not None:
        return r.ten_top1, r.ten_top5, "10-crop"
    return r.top1, r.top5, "centre"


def deltas(base: Row, run: Row) -> tuple[float | None, float | None, str]:
    """(top-1, top-5) error of `run` minus `base`, in points, on the crops both have."""
    both_ten = base.ten_top1 is not None and run.ten_top1 is not None
    b1, b5 = (base.ten_top1, base.ten_top5) if both_ten else (base.top1, base.top5)
    r1, r5 = (run.ten_top1, run.ten_top5) if both_ten else (run.top1, run.top5)
    if None in (b1, b5, r1, r5):
        return None, None, ""
    return 100 * (r1 - b1), 100 * (r5 - b5), "10-crop" if both_ten else "centre"


def _p(x: float | None) -> str:
    return "–" if x is None else _pct(x)


def _d(x: float | None) -> str:
    return "–" if x is None else f"{x:+.2f}"


def table(rows: list[Row]) -> str:
    """compare.md: the runs, then the paper's claims they test."""
    base = rows[0]
    lines = [f"# Comparison against the baseline `{base.name}`", "",
             "Errors in %; differences in points of error (positive: the run is worse than the baseline), "
             "on the 10-crop errors when both runs have them, else on the last centre-crop validation. "
             "val - train loss: the last epoch's, a sign of overfitting (the train loss is taken with "
             "dropout and augmentation on).", "",
             "| run | options differing from the paper | epochs | top-1 | top-5 | 10-crop top-1 "
             "| 10-crop top-5 | best epoch | images/s | val - train loss | Δ top-1 | Δ top-5 "
             "| the paper (§: Δ top-1 / top-5) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    notes = []
    for r in rows:
        d1, d5, crops = deltas(base, r) if r is not base else (None, None, "")
        if r is base:
            paper_col = "baseline"
        else:
            claim, others = claim_for(base, r)
            paper_col = claim.shown() if claim else ""
            if claim and others:
                paper_col += f" (but {', '.join(others)} differ too)"
            if crops == "centre" and d1 is not None:
                notes.append(f"`{r.name}`: difference taken on the centre crop (no 10-crop in both runs)")
        speed = "–" if r.images_per_s is None else f"{r.images_per_s:.0f}"
        lines.append(f"| `{r.name}` | {' '.join(f'`{d}`' for d in r.differences) or 'none'} | {r.epochs} "
                     f"| {_p(r.top1)} | {_p(r.top5)} | {_p(r.ten_top1)} | {_p(r.ten_top5)} "
                     f"| {r.best_epoch or '–'} | {speed} | {'–' if r.gap is None else f'{r.gap:.3f}'} "
                     f"| {_d(d1)} | {_d(d5)} | {paper_col} |")
    lines += [""] + [f"- {n}" for n in notes] + ([""] if notes else [])
    lines += ["## The paper's claims", "", "| switch | value | section | top-1 | top-5 | the paper's words |",
              "| --- | --- | --- | --- | --- | --- |"]
    for c in CLAIMS:
        lines.append(f"| `--{c.switch}` | `{c.value}` | {c.section} | {_d(c.top1)} | {_d(c.top5)} "
                     f"| \"{c.words}\" |")
    lines += ["", f"![comparison]({COMPARE_PNG})", ""]
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    """Left: each run's errors. Right: each run's difference from the baseline, the paper's claimed
    difference as a marker beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    base = rows[0]
    names = [r.name for r in rows]
    x = np.arange(len(rows))
    fig, (ax_err, ax_d) = plt.subplots(1, 2, figsize=(max(10, 2.2 * len(rows)), 4.5), constrained_layout=True)
    w = 0.38
    highest = 0.0
    for i, (label, k) in enumerate((("top-1", 0), ("top-5", 1))):
        vals = [_errors(r)[k] for r in rows]
        ax_err.bar(x + (i - 0.5) * w, [100 * v if v is not None else np.nan for v in vals], w, label=label)
        highest = max([highest, *(100 * v for v in vals if v is not None)])
    ax_err.set_ylim(0, 1.25 * highest or 1)  # room for the legend above the bars
    ax_err.set_xticks(x, names, rotation=30, ha="right")
    ax_err.set_ylabel("validation error, % (10-crop where run)")
    ax_err.set_title("errors")
    others = rows[1:]
    xo = np.arange(len(others))
    for i, label in enumerate(("Δ top-1", "Δ top-5")):
        vals = [deltas(base, r)[i] for r in others]
        bars = ax_d.bar(xo + (i - 0.5) * w, [v if v is not None else np.nan for v in vals], w, label=label)
        ax_d.bar_label(bars, fmt="%+.2f", fontsize=8)  # a zero difference still shows a number
        claimed = [getattr(claim_for(base, r)[0], ("top1", "top5")[i], None) for r in others]
        if any(c is not None for c in claimed):
            ax_d.scatter(xo + (i - 0.5) * w, [c if c is not None else np.nan for c in claimed], marker="_",
                         s=400, linewidths=3, c="k", zorder=3, label="the paper" if i == 0 else None)
    ax_d.axhline(0, c="grey", lw=0.8)
    ax_d.use_sticky_edges = False  # bars stick the axis to 0; room on both sides for the labels
    ax_d.margins(y=0.15)
    ax_d.set_xticks(xo, [r.name for r in others], rotation=30, ha="right")
    ax_d.set_ylabel(f"error minus {base.name}'s, points")
    ax_d.set_title("difference from the baseline" + ("" if base.name == "baseline" else f" ({base.name})"))
    for ax in (ax_err, ax_d):
        ax.grid(axis="y", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def compare(runs: list[str | Path], out: str | Path = ".") -> tuple[Path, Path]:
    """Write compare.md and compare.png into `out`; the first run is the baseline. Raises ReportError."""
    from tools import atomic

    if not runs:
        raise ReportError("--compare needs at least one run folder (the first is the baseline)")
    rows = []
    for r in runs:
        try:
            rows.append(row(r))
        except (KeyError, TypeError, ValueError) as e:  # a record or setting of the wrong shape
            if isinstance(e, ReportError):
                raise
            raise ReportError(f"{r}: params.json or metrics.jsonl lacks or garbles a field "
                              f"({type(e).__name__}: {e})") from None
    names = [r.name for r in rows]
    if len(set(names)) != len(names):
        raise ReportError(f"--compare: two runs share a folder name ({', '.join(names)}); "
                          "the table names runs by folder")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    png, md = out / COMPARE_PNG, out / COMPARE_MD
    tmp = out / f".{COMPARE_PNG}.tmp.png"
    plot(rows, tmp)
    tmp.replace(png)
    atomic.write_bytes(str(md), table(rows).encode())
    return md, png
