"""`alexnet-prep`: ILSVRC in, verified 256px WebDataset shards and their statistics out.

    alexnet-prep sample --out data/sample              # a small synthetic ILSVRC copy
    alexnet-prep shard --src ILSVRC2012 --out shards/  # any supported layout, auto-detected
    alexnet-prep pca-stats --shards shards/            # pca.json + mean.npy
    alexnet-prep verify --shards shards/               # re-read and check everything

Imports neither torch nor DALI: it runs on a CPU-only preparation box and starts fast.
"""

from __future__ import annotations

import os
import sys

import click

from tools import version

DEFAULT_WORKERS = os.cpu_count() or 1
# Checked by click before a command starts; = tools.shard.MAX_SEED (numpy takes any int >= 0, the cap
# keeps the seed an int64 for every JSON reader of the manifest).
SEED = click.IntRange(0, 2**63 - 1)


def _fail(message: str) -> None:
    raise click.ClickException(message)


def _os_error(e: OSError) -> str:
    """One line for an OSError: the file it names and the system's reason."""
    where = e.filename if e.filename is not None else ""
    why = e.strerror or str(e) or type(e).__name__
    return f"{where}: {why}" if where else why


class _Prep(click.Group):
    """Ends every command's unexpected OSError or bad URL in one line and exit 1, not a traceback.

    The commands handle the failures they expect with a more specific message; this is the net
    under them (a disk that fills, a folder that turns read-only mid-run).
    """

    def invoke(self, ctx: click.Context) -> object:
        from tools.urls import UrlError

        try:
            return super().invoke(ctx)
        except OSError as e:
            raise click.ClickException(_os_error(e)) from None
        except UrlError as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=_Prep, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@version.option("alexnet-prep")
def main() -> None:
    """Prepare ILSVRC for alexnet-repro: shards, index files, PCA lighting stats, checks.

    \b
    The usual sequence:
      alexnet-prep shard --src /data/ILSVRC2012 --out shards/
      alexnet-prep pca-stats --shards shards/ --from-manifest
      alexnet-prep verify --shards shards/
    `alexnet-prep sample --out DIR` makes a small synthetic ILSVRC copy to try it on.
    Every command takes --help.
    """


@main.command()
@click.option("--out", required=True, help="Folder or fsspec URL to write the dataset into.")
@click.option("--layout", type=click.Choice(["raw", "folders", "kaggle", "fall"]), default="raw",
              help="raw: the never-extracted ILSVRC downloads; folders: train/<wnid>/, val/<wnid>/; "
                   "kaggle: ILSVRC/Data/CLS-LOC with LOC_*.csv/txt; fall: an ImageNet Fall release "
                   "(fall11_whole.tar, a tar of per-synset tars; train images only, class sizes vary).")
@click.option("--classes", type=click.IntRange(2, 1000), default=10, help="Number of classes.")
@click.option("--train-per-class", type=click.IntRange(1), default=40, help="Training images per class.")
@click.option("--val-per-class", type=click.IntRange(1), default=10, help="Validation images per class.")
@click.option("--seed", type=SEED, default=0, help="Same seed, byte-identical files.")
@click.option("--year", type=click.Choice(["2012", "2010"]), default="2012",
              help="Devkit and file names of this ILSVRC year (raw layout only). 2010 as published: "
                   "a test split with its ground truth, patch_images.tar, gzip-compressed members.")
@click.option("--test-per-class", type=click.IntRange(1), default=None,
              help="Test images per class (--year 2010) [default: --val-per-class].")
@click.option("--words/--no-words", default=True,
              help="--layout fall: write ImageNet's words.txt beside the tar (else classes are named "
                   "by wnid).")
def sample(out: str, layout: str, classes: int, train_per_class: int, val_per_class: int, seed: int,
           year: str, test_per_class: int | None, words: bool) -> None:
    """Write a small synthetic dataset in the exact shape of a real ILSVRC copy.

    Class-dependent shapes, colours and textures (learnable), ImageNet-like sizes and aspect ratios,
    and the real data's quirks: a CMYK JPEG, a grayscale JPEG, a PNG named .JPEG and one truncated
    JPEG (the one image `shard` must skip).
    """
    from tools.sample import make_sample

    if year == "2010" and layout != "raw":
        _fail("--year 2010 is only available with --layout raw")
    if test_per_class is not None and year != "2010":
        _fail("--test-per-class: only ILSVRC-2010 published test labels (--year 2010)")
    if not words and layout != "fall":
        _fail("--no-words: only the fall layout has a words.txt (--layout fall)")
    try:
        summary = make_sample(out, layout=layout, classes=classes, train_per_class=train_per_class,
                              val_per_class=val_per_class, seed=seed, year=int(year),
                              test_per_class=test_per_class, words=words)
    except ValueError as e:
        _fail(str(e))
    except OSError as e:
        _fail(f"--out {out}: cannot write the sample ({_os_error(e)})")
    rest = f" + {summary['val']} val images"
    if "test" in summary:
        rest += f" + {summary['test']} test images"
    if layout == "fall":
        rest = " images (no val: a Fall release has none)"
    click.echo(f"{out}: {summary['layout']} sample, {summary['classes']} classes, "
               f"{summary['train']} train{rest}")


@main.command()
@click.option("--src", required=True, help="The ILSVRC copy: folder or fsspec URL (layout auto-detected).")
@click.option("--out", default="shards", help="Folder or fsspec URL for the shards.")
@click.option("--split", "splits", default=None,
              help="Comma-separated splits to write (train, val, test) [default: every split of --src "
                   "that has labels].")
@click.option("--shard-size", type=int, default=None,
              help="Samples per shard [default: 5000: ~125 MB at an estimated ~25 kB per stored "
                   "ImageNet image].")
@click.option("--quality", type=int, default=None, help="JPEG quality of the stored images [default: 90].")
@click.option("--seed", type=SEED, default=0, help="Seed of the train shuffle across shards.")
@click.option("--workers", type=int, default=DEFAULT_WORKERS, help="Parallel processes (one shard each).")
@click.option("--strict", is_flag=True, help="Exit non-zero if any image had to be skipped.")
@click.option("--limit-classes", type=int, default=None, help="Only the first N classes (sorted wnids).")
@click.option("--per-class", type=int, default=None,
              help="Only the first N images of each class and split.")
@click.option("--overwrite", is_flag=True, help="Replace shards made in --out with other options.")
@click.option("--num-nodes", type=int, default=1, help="Machines sharing the work (see --node-rank).")
@click.option("--node-rank", type=int, default=0,
              help="This machine's share: shards i with i % num-nodes == node-rank; then merge-manifest.")
@click.option("--holdout-per-class", type=int, default=None,
              help="Sources with train only (Fall releases): hold out N images of each class as the val "
                   "split (at most all but one of a class).")
@click.option("--holdout-fraction", type=float, default=None,
              help="As --holdout-per-class, a fraction of each class instead (0.5: Fall 2009's half "
                   "for training, half for testing).")
@click.option("--holdout-seed", type=SEED, default=0,
              help="Seed of the held-out choice, a pure function of (seed, wnid, image name).")
def shard(src: str, out: str, splits: str | None, shard_size: int | None, quality: int | None, seed: int,
          workers: int, strict: bool, limit_classes: int | None, per_class: int | None, overwrite: bool,
          num_nodes: int, node_rank: int, holdout_per_class: int | None, holdout_fraction: float | None,
          holdout_seed: int) -> None:
    """Resize every image (shorter side 256, centre 256x256 crop) into WebDataset tar shards.

    Rerunning the same command after an interruption finishes only what is missing; the shards are
    byte-identical to an uninterrupted run. Undecodable images are skipped and listed in
    manifest.json. Writes a DALI .idx beside each tar, the .huggingface.yaml dataset card and timm's
    _info.json, and manifest.json last.
    """
    from tools.layouts import LayoutError
    from tools.lock import RunLockedError
    from tools.resize import DEFAULT_QUALITY
    from tools.shard import ShardError, ShardSettings, run
    from tools.writer import DEFAULT_SHARD_SIZE

    settings = ShardSettings(
        src=src.rstrip("/"), out=out.rstrip("/"),
        splits=None if splits is None else tuple(s.strip() for s in splits.split(",") if s.strip()),
        shard_size=DEFAULT_SHARD_SIZE if shard_size is None else shard_size,
        quality=DEFAULT_QUALITY if quality is None else quality, seed=seed, workers=workers, strict=strict,
        limit_classes=limit_classes, per_class=per_class, overwrite=overwrite, num_nodes=num_nodes,
        node_rank=node_rank, holdout_per_class=holdout_per_class, holdout_fraction=holdout_fraction,
        holdout_seed=holdout_seed)
    try:
        m = run(settings, log=click.echo)
    except (LayoutError, ShardError, RunLockedError) as e:
        _fail(str(e))
    skipped = [s for body in m["splits"].values() for s in body["skipped"]]
    for split, body in m["splits"].items():
        click.echo(f"{split}: {body['samples']} samples in {len(body['shards'])} shards")
    if skipped:
        click.echo(f"skipped {len(skipped)} undecodable images (listed in manifest.json):", err=True)
        for s in skipped[:20]:
            click.echo(f"  {s['source']}: {s['reason']}", err=True)
        if strict:
            sys.exit(1)


@main.command("merge-manifest")
@click.option("--shards", default="shards", help="The shard folder all nodes wrote into.")
def merge_manifest(shards: str) -> None:
    """Join the manifest.node-R-of-K.json files of a multi-node run into manifest.json (and the
    .huggingface.yaml dataset card and _info.json made from it)."""
    from tools import atomic, cards, manifest, urls

    shards = shards.rstrip("/")
    fs, root = urls.filesystem(shards)
    if not fs.isdir(root):
        _fail(f"{shards}: no such folder")
    names = sorted(p for p in fs.ls(root, detail=False) if p.rsplit("/", 1)[-1].startswith("manifest.node-"))
    if not names:
        _fail(f"{shards}: no manifest.node-*.json files to merge")
    parts = [atomic.read_json(urls.join(shards, n.rsplit("/", 1)[-1])) for n in names]
    expected = parts[0]["options"].get("num_nodes", 1)
    if len(parts) != expected:
        _fail(f"{shards}: {len(parts)} of {expected} node manifests present")
    try:
        merged = manifest.merge(parts)
    except manifest.ManifestError as e:
        _fail(f"{shards}: {e}")
    cards.write(shards, merged)
    atomic.write_json(urls.join(shards, manifest.MANIFEST), merged)
    click.echo(f"{shards}/manifest.json: " + ", ".join(
        f"{s} {b['samples']} samples in {len(b['shards'])} shards" for s, b in merged["splits"].items()))


@main.command()
@click.option("--shards", default="shards", help="Folder or fsspec URL holding *.tar shards.")
def index(shards: str) -> None:
    """Write the DALI index (.idx, wds2idx format) beside every tar in --shards, and, from its
    manifest.json, the .huggingface.yaml dataset card (Hugging Face datasets) and _info.json (timm)."""
    from tqdm import tqdm

    from tools import cards, manifest, urls
    from tools.index import write_index

    shards = shards.rstrip("/")
    fs, root = urls.filesystem(shards)
    if not fs.isdir(root):
        _fail(f"{shards}: no such folder")
    tars = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False) if p.endswith(".tar"))
    if not tars:
        _fail(f"{shards}: no .tar files")
    for name in tqdm(tars, unit="shard", desc="index"):
        try:
            write_index(urls.join(shards, name))
        except ValueError as e:
            _fail(str(e))
        except OSError as e:
            _fail(f"{shards}: cannot write the index of {name} ({_os_error(e)})")
    click.echo(f"{shards}: wrote {len(tars)} index files")
    if not fs.exists(urls.filesystem(urls.join(shards, manifest.MANIFEST))[1]):
        click.echo(f"{shards}: no {manifest.MANIFEST}, so no {cards.CARD} or {cards.TIMM_INFO} written")
        return
    try:
        written = cards.write(shards, manifest.load(shards))
    except manifest.ManifestError as e:
        _fail(str(e))
    click.echo(f"{shards}: wrote {' and '.join(written)} from {manifest.MANIFEST}")


@main.command("pca-stats")
@click.option("--shards", default="shards", help="Folder or fsspec URL with the shards and manifest.json.")
@click.option("--from-manifest", is_flag=True,
              help="Combine the pixel sums `shard` stored instead of decoding every train image (fast).")
@click.option("--workers", type=int, default=DEFAULT_WORKERS, help="Parallel processes (one shard each).")
def pca_stats(shards: str, from_manifest: bool, workers: int) -> None:
    """RGB mean/std/covariance and its eigenbasis (pca.json) and the mean image (mean.npy)."""
    from tools.manifest import ManifestError
    from tools.stats import StatsError, compute

    try:
        stats = compute(shards, from_manifest=from_manifest, workers=workers)
    except (ManifestError, StatsError, OSError) as e:
        _fail(str(e))
    fmt = ", ".join
    click.echo(f"{shards.rstrip('/')}/pca.json: {stats['pixels']} pixels, "
               f"mean [{fmt(f'{v:.2f}' for v in stats['mean'])}], "
               f"eigval [{fmt(f'{v:.2f}' for v in stats['eigval'])}]")


@main.command()
@click.option("--shards", default="shards", help="Folder or fsspec URL with the shards and manifest.json.")
@click.option("--workers", type=int, default=DEFAULT_WORKERS, help="Parallel processes (one shard each).")
def verify(shards: str, workers: int) -> None:
    """Re-read every shard and check it against the manifest; exit 1 on any problem."""
    from tools.verify import verify as run_verify

    problems = run_verify(shards, workers=workers)
    for p in problems:
        click.echo(p, err=True)
    if problems:
        click.echo(f"{shards}: {len(problems)} problems", err=True)
        sys.exit(1)
    click.echo(f"{shards}: all shards verified")


@main.command()
@click.option("--images", type=click.IntRange(10), default=200, help="Photo-like JPEGs to process.")
@click.option("--repeats", type=click.IntRange(1), default=3, help="Timed runs; the median is reported.")
@click.option("--workers", type=click.IntRange(1), default=DEFAULT_WORKERS,
              help="Workers of the parallel run.")
def bench(images: int, repeats: int, workers: int) -> None:
    """Time `shard` against the naive PIL reference on the same images; print images/s and PSNR."""
    from tools.bench import report, run

    click.echo(report(run(n=images, repeats=repeats, workers=workers)))


if __name__ == "__main__":
    main()
