"""Bytes sent per rank per training step: plain DDP against the 2014 hybrid scheme (trainer/hybrid.py),
counted at the collectives of a real step, beside the ring-collective formula.

    alexnet-bench comm --nproc 2          # K=2 gloo processes on the CPU, 128 images per rank

The formula (docs/PERFORMANCE.md; the hybrid design note, HYBRID-NOTES.md §2): ring collectives over K ranks,
bytes SENT by one rank, s bytes per element.

- all-reduce of n elements: 2(K-1)/K * n * s (reduce-scatter then all-gather, each (K-1)/K of n);
- all-gather producing n elements in all (K pieces of n/K): (K-1)/K * n * s;
- reduce-scatter of an n-element input: (K-1)/K * n * s.

DDP all-reduces every gradient each step. The hybrid all-reduces only the data-parallel parameters
(conv1-conv5 and fc8) and moves activations at two boundaries instead: conv5's features (all-gather
forward, reduce-scatter of their gradient backward) and fc7's output (reduce-scatter of the partial
sums forward, all-gather of the gradient backward), 2(K-1) * B * width * s each, B images per rank.
Measured (torch 2.13, gloo, K = 2 and 4): nothing else moves in the step. In particular fc7's bias,
replicated on every rank, needs no all-reduce: backward all-gathers fc7's full output gradient, so
every rank computes the same bias gradient itself; and the optimizer step is local (every gradient
has its parameter's placement). So the hybrid's formula is the notes' layout H with nothing added.

The count: a `TorchDispatchMode` sees every collective issued through the dispatcher, DTensor's
functional ones (`_c10d_functional.*`) and the process-group ones (`c10d.*`), and adds its payload
times the factor above. DDP's reducer is C++, so its all-reduces are counted at a DDP communication
hook, from the bucket it hands over, which then runs DDP's own all-reduce. In torch 2.13 the
reducer's collective also passes through the dispatcher, so the mode would see it as well: inside
the hook the mode sets it aside (`seen_in_hook`, a cross-check) so that nothing is counted twice
whichever way a torch build routes it. A collective the counter does not know raises rather than go
uncounted. The figures are the ring algorithm's cost of the collectives actually issued (their
kinds and sizes are what is measured), not gloo's bytes on the wire: gloo picks its own algorithms.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import click
import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.utils._python_dispatch import TorchDispatchMode

import paper
from trainer import distributed
from trainer.build import build_model, make_optimizer, parallelize
from trainer.config import PARALLEL_MODES, TrainConfig
from trainer.model import AlexNet

MODES = PARALLEL_MODES  # ("ddp", "hybrid")
OPS = ("all_gather", "reduce_scatter", "all_reduce", "broadcast")
# DDP builds its buckets in the order parameters are declared, then rebuilds them after the first
# backward in the order gradients became ready, and at the second step's forward rank 0 broadcasts the
# new layout (two small broadcasts, measured). The third step is the steady state that repeats.
WARMUP_STEPS = 2
DATA_PARALLEL = ("conv", "fc8", "bn")  # parameter-name prefixes the hybrid keeps whole on every rank


# --- the formula -----------------------------------------------------------------------------------

def all_reduce_bytes(n: int, k: int, s: int) -> Fraction:
    """Ring all-reduce of n elements: each rank sends 2(K-1) chunks of n/K."""
    return Fraction(2 * (k - 1), k) * n * s


def all_gather_bytes(n: int, k: int, s: int) -> Fraction:
    """Ring all-gather producing n elements in all: each rank sends its own piece and passes on K-2
    others, (K-1) chunks of n/K."""
    return Fraction(k - 1, k) * n * s


def reduce_scatter_bytes(n: int, k: int, s: int) -> Fraction:
    """Ring reduce-scatter of an n-element input: (K-1) chunks of n/K."""
    return Fraction(k - 1, k) * n * s


@dataclass(frozen=True)
class Sizes:
    """What the formula needs from the network, counted from the model itself."""

    params: int  # all parameters: DDP's all-reduce
    data_parallel: int  # conv1-conv5 + fc8 (+ BatchNorm's): the hybrid's all-reduce
    features: int  # fc6's inputs per image (pool5 flattened, 9216): the conv5 boundary
    hidden: int  # fc7's outputs per image (4096): the fc7 boundary


def sizes(net: AlexNet) -> Sizes:
    params = dict(net.named_parameters())
    return Sizes(
        params=sum(p.numel() for p in params.values()),
        data_parallel=sum(p.numel() for n, p in params.items() if n.startswith(DATA_PARALLEL)),
        features=net.fc6[0].in_features,
        hidden=sum(layer.out_features for layer in net.fc7),
    )


def ddp_bytes(sz: Sizes, k: int, s: int) -> Fraction:
    """DDP, per rank per step: one all-reduce of every gradient (independent of the batch)."""
    return all_reduce_bytes(sz.params, k, s)


def hybrid_parts(sz: Sizes, k: int, b: int, s: int) -> dict[str, Fraction]:
    """The hybrid, per rank per step with b images per rank, by where it is sent."""
    return {
        "all_reduce": all_reduce_bytes(sz.data_parallel, k, s),
        # forward all-gather of the K*b images' features, backward reduce-scatter of their gradient
        "conv5": all_gather_bytes(k * b * sz.features, k, s)
        + reduce_scatter_bytes(k * b * sz.features, k, s),
        # forward reduce-scatter of fc7's partial sums for K*b images, backward all-gather of the gradient
        "fc7": reduce_scatter_bytes(k * b * sz.hidden, k, s) + all_gather_bytes(k * b * sz.hidden, k, s),
    }


def hybrid_bytes(sz: Sizes, k: int, b: int, s: int) -> Fraction:
    return sum(hybrid_parts(sz, k, b, s).values(), Fraction(0))


def formula(mode: str, sz: Sizes, k: int, b: int, s: int) -> Fraction:
    return ddp_bytes(sz, k, s) if mode == "ddp" else hybrid_bytes(sz, k, b, s)


# --- the count -------------------------------------------------------------------------------------

def _group_size(group: Any) -> int:
    """K of a collective's group: a functional collective names it, a c10d op passes it boxed (a
    TorchScript object)."""
    if isinstance(group, str):
        return dist.distributed_c10d._resolve_process_group(group).size()
    return dist.ProcessGroup.unbox(group).size()


def _numel(tensors: Any) -> int:
    if isinstance(tensors, torch.Tensor):
        return tensors.numel()
    return sum(_numel(t) for t in tensors)


def _element_size(tensors: Any) -> int:
    while not isinstance(tensors, torch.Tensor):
        tensors = tensors[0]
    return tensors.element_size()


def _payload(op: str, args: tuple) -> tuple[str, Fraction] | None:
    """(kind, bytes sent per rank) of the collective `namespace::name`, or None for an op that sends
    nothing. The argument positions are the ops' schemas in torch 2.13 (`torch.ops.c10d.allreduce_.
    default._schema`, ...); the `_c10d_functional_autograd` ops take the functional ones' arguments."""
    def ring(kind: str, tensors: Any, n: int, group: Any) -> tuple[str, Fraction]:
        k, s = _group_size(group), _element_size(tensors)
        bytes_ = {"all_gather": all_gather_bytes, "reduce_scatter": reduce_scatter_bytes,
                  "all_reduce": all_reduce_bytes}[kind](n, k, s)
        return kind, bytes_

    functional = ("_c10d_functional", "_c10d_functional_autograd")
    match op.split("::"):
        case ["_c10d_functional", "wait_tensor" | "_wrap_tensor_autograd"]:
            return None
        # (input, group_size, group_name): each rank's input is one of the K pieces
        case [ns, "all_gather_into_tensor" | "all_gather_into_tensor_out"
              | "all_gather_into_tensor_coalesced"] if ns in functional:
            return ring("all_gather", args[0], _numel(args[0]) * args[1], args[2])
        # (input, reduce_op, group_size, group_name)
        case [ns, "reduce_scatter_tensor" | "reduce_scatter_tensor_out"
              | "reduce_scatter_tensor_coalesced"] if ns in functional:
            return ring("reduce_scatter", args[0], _numel(args[0]), args[3])
        # (input, reduce_op, group_name)
        case ["_c10d_functional", "all_reduce" | "all_reduce_" | "all_reduce_coalesced"
              | "all_reduce_coalesced_"]:
            return ring("all_reduce", args[0], _numel(args[0]), args[2])
        # (tensors, process_group, reduce_op, ...)
        case ["c10d", "allreduce_" | "allreduce_coalesced_"]:
            return ring("all_reduce", args[0], _numel(args[0]), args[1])
        # (output, input, process_group, ...): output holds all K pieces
        case ["c10d", "_allgather_base_" | "allgather_into_tensor_coalesced_"]:
            return ring("all_gather", args[1], _numel(args[0]), args[2])
        # (output_tensors [[K per input]], input_tensors, process_group, ...)
        case ["c10d", "allgather_" | "allgather_coalesced_"]:
            return ring("all_gather", args[1], _numel(args[0]), args[2])
        # (output, input, process_group, ...): input holds all K pieces
        case ["c10d", "_reduce_scatter_base_" | "reduce_scatter_tensor_coalesced_"]:
            return ring("reduce_scatter", args[1], _numel(args[1]), args[2])
        # (output_tensors, input_tensors [[K per output]], process_group, ...)
        case ["c10d", "reduce_scatter_"]:
            return ring("reduce_scatter", args[1], _numel(args[1]), args[2])
        # (tensors, process_group, root, ...): a chain or ring sends all n elements from every rank but
        # the last; counted as n for every rank, the bound (DDP's bucket-layout sync, warm-up only)
        case ["c10d", "broadcast_"] | ["_c10d_functional", "broadcast" | "broadcast_"]:
            return "broadcast", Fraction(_numel(args[0]) * _element_size(args[0]))
        case ["c10d", "barrier" | "monitored_barrier_"]:
            return None
        case ["c10d" | "_c10d_functional" | "_c10d_functional_autograd", _]:
            raise NotImplementedError(f"comm: no byte count for the collective {op}")
    return None


class CommCounter(TorchDispatchMode):
    """Counts the bytes each collective issued while it is active sends from this rank (see the module
    doc for the formula). `bytes` and `calls` by kind (OPS); `register(ddp_model)` adds DDP's
    all-reduces, which are counted at DDP's communication hook."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.seen_in_hook = Fraction(0)  # what the mode saw inside the hook: DDP's own all-reduce
        self.active = False  # the hook counts only while the mode is entered, as the mode itself
        self._in_hook = False

    def __enter__(self) -> CommCounter:
        self.active = True
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.active = False
        super().__exit__(*exc)

    def reset(self) -> None:
        self.bytes.clear()
        self.calls.clear()
        self.seen_in_hook = Fraction(0)

    def add(self, kind: str, nbytes: Fraction) -> None:
        self.bytes[kind] += nbytes
        self.calls[kind] += 1

    def total(self) -> Fraction:
        return sum(self.bytes.values(), Fraction(0))

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        counted = _payload(f"{func.namespace}::{func.overloadpacket.__name__}", args)
        if counted is not None:
            kind, nbytes = counted
            if self._in_hook:
                self.seen_in_hook += nbytes  # the hook has counted it already
            else:
                self.add(kind, nbytes)
        return func(*args, **(kwargs or {}))

    def register(self, model: nn.parallel.DistributedDataParallel) -> None:
        """Count DDP's gradient all-reduces at its communication hook (before the first backward)."""
        model.register_comm_hook(self, _counted_allreduce)


def _counted_allreduce(counter: CommCounter, bucket):  # noqa: ANN001, ANN202 - see the docstring
    """DDP's default all-reduce (average over the ranks) of one bucket (a dist.GradBucket), its bytes
    counted first; returns the all-reduce's Future. Not annotated: DDP checks the annotations against
    the classes themselves, and this module's `from __future__ import annotations` makes them strings."""
    flat = bucket.buffer()  # the bucket's gradients, flattened: what DDP all-reduces
    if counter.active:
        counter.add("all_reduce", all_reduce_bytes(flat.numel(), dist.get_world_size(), flat.element_size()))
    counter._in_hook = True
    try:
        return allreduce_hook(None, bucket)
    finally:
        counter._in_hook = False


# --- one measured step on K processes --------------------------------------------------------------

def build(mode: str, num_classes: int, rank: int, k: int) -> tuple[nn.Module, torch.optim.Optimizer, AlexNet]:
    """The trainer's model and optimizer for `alexnet-train --parallel mode` on this rank (the process
    group is up), and the AlexNet inside. The bytes depend on none of the settings left at their
    defaults or set here for the CPU (kaiming init, NCHW), only on the layer sizes and B."""
    cfg = TrainConfig(shards="", out="", init="kaiming", devices=("cpu",), parallel=mode, precision="fp32",
                      channels_last=False)
    net = build_model(cfg, num_classes, cfg.devices)
    model = parallelize(net, cfg, distributed.World(rank, k, rank, k), cfg.devices)
    return model, make_optimizer(cfg, model), net


def _rank(rank: int, k: int, port: int, mode: str, per_rank: int, num_classes: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # K processes share the cores
    dist.init_process_group("gloo", rank=rank, world_size=k)
    try:
        from trainer.placement import set_precision
        from trainer.step import train_step

        fp32 = set_precision("fp32")
        model, opt, net = build(mode, num_classes, rank, k)
        counter = CommCounter()
        counter.register(model)
        g = torch.Generator().manual_seed(rank)
        images = torch.randn(per_rank, 3, 224, 224, generator=g)
        labels = torch.randint(0, num_classes, (per_rank,), generator=g)
        for _ in range(WARMUP_STEPS):
            train_step(model, opt, images, labels, fp32)
        with counter:  # the trainer's whole step: forward, loss (mean over B), backward, optimizer
            train_step(model, opt, images, labels, fp32)
        mine = {"bytes": dict(counter.bytes), "calls": dict(counter.calls),
                "seen_in_hook": counter.seen_in_hook}
        everyone: list[Any] = [None] * k
        dist.all_gather_object(everyone, mine)
        if rank == 0:
            torch.save({"ranks": everyone, "sizes": sizes(net)}, out)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    distributed.leave()  # the counter's comm hook: see its docstring


def measure(mode: str, k: int, per_rank: int, num_classes: int, out: str) -> dict[str, Any]:
    """One training step of `mode` on k spawned gloo processes with per_rank images each (after
    WARMUP_STEPS), counted on every rank. Returns each rank's counts ("ranks") and the model's Sizes."""
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(k, distributed.free_port(), mode, per_rank, num_classes, out), nprocs=k, join=True)
    return torch.load(out, weights_only=False)


# --- alexnet-bench comm ----------------------------------------------------------------------------

PROJECT_K = (2, 4, 8, 16, 64)
DTYPE_BYTES = {"fp32": 4, "bf16": 2}
MB = 10**6


def report(k: int, per_rank: int, num_classes: int, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The figures of one `measure` per mode: measured against the formula, per op, and the formula's
    projection at the paper's 128 images per rank. Rank 0's count is the rank's; all ranks must agree."""
    import paper

    s = DTYPE_BYTES["fp32"]  # the step runs in fp32 on the CPU
    sz = next(iter(results.values()))["sizes"]
    modes: dict[str, Any] = {}
    for mode, r in results.items():
        totals = [sum(rank["bytes"].values(), Fraction(0)) for rank in r["ranks"]]
        want = formula(mode, sz, k, per_rank, s)
        modes[mode] = {
            "measured_bytes": float(totals[0]), "formula_bytes": float(want),
            "ratio": float(totals[0] / want), "exact": totals[0] == want,
            "ranks_equal": len(set(totals)) == 1, "per_rank_bytes": [float(t) for t in totals],
            "calls": {op: r["ranks"][0]["calls"].get(op, 0) for op in OPS},
            "bytes_by_op": {op: float(r["ranks"][0]["bytes"].get(op, 0)) for op in OPS},
            # DDP's all-reduce as the dispatch mode saw it inside the hook (0 where a build hides it)
            "ddp_allreduce_seen_by_dispatch": float(r["ranks"][0]["seen_in_hook"]),
        }
    projection = []
    b = paper.BATCH_SIZE
    for pk in PROJECT_K:
        row: dict[str, Any] = {"k": pk}
        for dtype, ds in DTYPE_BYTES.items():
            row[f"ddp_{dtype}"] = float(ddp_bytes(sz, pk, ds))
            row[f"hybrid_{dtype}"] = float(hybrid_bytes(sz, pk, b, ds))
        row.update({f"{part}_fp32": float(v) for part, v in hybrid_parts(sz, pk, b, 4).items()})
        row["ddp_over_hybrid"] = row["ddp_fp32"] / row["hybrid_fp32"]
        projection.append(row)
    return {"sizes": {f: getattr(sz, f) for f in Sizes.__dataclass_fields__}, "modes": modes,
            "projection_per_rank": b, "projection": projection}


def _machine() -> str:
    import datetime
    import platform

    from trainer.metrics import machine

    m = machine()
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{m['host']}: {m['cpu']} ({m['cpus']} cores); {platform.platform()}; torch {m['torch']}; {when}"


def _echo_report(figures: dict[str, Any], k: int, per_rank: int, num_classes: int) -> None:
    echo = click.echo
    echo(f"machine: {figures['machine']}")
    echo(f"K={k} gloo processes, {per_rank} images per rank, {num_classes} classes, fp32 (4 B an element); "
         f"counted: step {WARMUP_STEPS + 1} (forward, backward, optimizer), after {WARMUP_STEPS} warm-up "
         f"steps (DDP rebuilds its buckets after step 1 and broadcasts their layout in step 2)")
    echo("MB = 10^6 bytes sent per rank per step; ring cost of the collectives issued")
    echo(f"{'mode':<7} {'measured MB':>12} {'formula MB':>11} {'ratio':>6}  "
         + "  ".join(f"{op.replace('_', '-') + 's':>15}" for op in OPS))
    for mode, r in figures["modes"].items():
        calls = "  ".join(f"{r['calls'][op]:>15}" for op in OPS)
        echo(f"{mode:<7} {r['measured_bytes'] / MB:>12.3f} {r['formula_bytes'] / MB:>11.3f} "
             f"{r['ratio']:>6.3f}  {calls}")
        if not r["ranks_equal"]:
            echo(f"  {mode}: the ranks differ: {[round(t / MB, 3) for t in r['per_rank_bytes']]} MB")
    ddp, hyb = figures["modes"]["ddp"], figures["modes"]["hybrid"]
    echo(f"ddp / hybrid: measured {ddp['measured_bytes'] / hyb['measured_bytes']:.2f}, "
         f"formula {ddp['formula_bytes'] / hyb['formula_bytes']:.2f}")
    b = figures["projection_per_rank"]
    if b != per_rank:
        echo(f"(measured at {per_rank} images per rank: the hybrid's conv5 and fc7 terms are linear in the "
             f"images per rank, the all-reduces do not depend on them)")
    echo(f"\nformula at {b} images per rank, MB per rank per step "
         "(hybrid = all-reduce of conv + fc8, conv5 boundary, fc7 boundary):")
    echo(f"{'K':>3} {'DDP fp32':>9} {'DDP bf16':>9} {'AR fp32':>8} {'conv5':>7} {'fc7':>7} "
         f"{'hybrid fp32':>12} {'hybrid bf16':>12} {'DDP/hybrid':>11}")
    for row in figures["projection"]:
        mb = {key: v / MB for key, v in row.items() if key.endswith(("fp32", "bf16"))}
        echo(f"{row['k']:>3} {mb['ddp_fp32']:>9.1f} {mb['ddp_bf16']:>9.1f} {mb['all_reduce_fp32']:>8.1f} "
             f"{mb['conv5_fp32']:>7.1f} {mb['fc7_fp32']:>7.1f} {mb['hybrid_fp32']:>12.1f} "
             f"{mb['hybrid_bf16']:>12.1f} {row['ddp_over_hybrid']:>11.2f}")


@click.command(context_settings={"show_default": True})
@click.option("--nproc", type=click.IntRange(2), default=2,
              help="K: gloo processes on this machine, one rank each (each runs one thread).")
@click.option("--per-rank", type=click.IntRange(1), default=paper.BATCH_SIZE,
              help="B: images per rank in the measured step (the paper's 128 per GPU). Only the hybrid's "
                   "activation terms depend on it, linearly; on a 2-core CPU a K=4 step of 128 takes "
                   "minutes, so a smaller B checks the formula faster.")
@click.option("--classes", type=click.IntRange(1), default=paper.NUM_CLASSES,
              help="Classes: fc8's width, all-reduced by both schemes.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the figures (machine, settings, per mode and op, projection) to this file.")
def command(nproc: int, per_rank: int, classes: int, json_path: str | None) -> None:
    """Bytes sent per rank per training step, plain DDP vs the 2014 hybrid (trainer/hybrid.py),
    counted at the collectives of one real step on K CPU processes (gloo), beside the ring-collective
    formula, then the formula's projection to more ranks.

    \b
    alexnet-bench comm --nproc 2
    alexnet-bench comm --nproc 4 --per-rank 32 --json out/comm-k4.json

    Each mode builds the trainer's model (DDP: AlexNet in DistributedDataParallel; hybrid: fc6/fc7
    split across the ranks, conv + fc8 in DDP), runs two warm-up steps and counts the third.
    Every collective is counted at the dispatcher (DTensor's functional collectives, c10d's ops) and
    DDP's gradient buckets at a communication hook, each as the bytes a rank sends in a ring
    algorithm: all-reduce 2(K-1)/K n s, all-gather and reduce-scatter (K-1)/K n s. Exits 1 if a
    count is not the formula's. The formula is in trainer/benchmarks/comm.py and docs/PERFORMANCE.md.
    """
    import tempfile

    if json_path and not os.path.isdir(os.path.dirname(os.path.abspath(json_path))):
        raise click.UsageError(f"--json: the folder of {json_path} does not exist")
    results = {}
    with tempfile.TemporaryDirectory(prefix="alexnet-comm-") as tmp:
        for mode in MODES:
            results[mode] = measure(mode, nproc, per_rank, classes, os.path.join(tmp, f"{mode}.pt"))
    figures = {"bench": "comm", "machine": _machine(),
               "settings": {"nproc": nproc, "per_rank": per_rank, "classes": classes, "dtype": "fp32",
                            "warmup_steps": WARMUP_STEPS, "backend": "gloo"},
               **report(nproc, per_rank, classes, results)}
    _echo_report(figures, nproc, per_rank, classes)
    if json_path:
        from tools import atomic

        atomic.write_json(json_path, figures)
        click.echo(f"wrote {json_path}")
    wrong = [m for m, r in figures["modes"].items() if not (r["exact"] and r["ranks_equal"])]
    if wrong:
        raise click.ClickException(f"the count differs from the formula for {', '.join(wrong)}")
