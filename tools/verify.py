"""`alexnet-prep verify`: re-read everything a shard folder claims to hold and report each problem.

Checked per shard: size and sha256 against the manifest, the tar reads to its end, the sample
count, every sample has jpg + cls + lbl + json with consistent labels in range, every JPEG decodes
completely to 256x256x3, and the DALI index equals the one the tar implies. Across shards: no key
twice, no tar the manifest does not list, pca.json made from these very train shards, and the
.huggingface.yaml dataset card and timm's _info.json are the ones this manifest makes (tools/cards.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import struct
from typing import Any

from tqdm import tqdm

from paper import STORED_SIZE
from tools import cards, manifest, urls, wds
from tools.index import build_index, index_path
from tools.resize import decode_stored
from tools.statfiles import MEAN_FILE, PCA_FILE, StatFileError, read_mean_image, read_pca

REQUIRED = ("jpg", "cls", "lbl", "json")


def _check_sample(shard: str, sample: dict[str, Any], num_classes: int) -> list[str]:
    key = sample["__key__"]
    missing = [e for e in REQUIRED if e not in sample]
    if missing:
        return [f"{shard}: {key}: missing {', '.join(missing)}"]
    problems = []
    try:
        label = int(sample["cls"].decode())
    except ValueError:
        return [f"{shard}: {key}: cls is not an integer ({sample['cls'][:20]!r})"]
    if not 0 <= label < num_classes:
        problems.append(f"{shard}: {key}: label {label} outside 0..{num_classes - 1}")
    if len(sample["lbl"]) != 4 or struct.unpack("<i", sample["lbl"])[0] != label:
        problems.append(f"{shard}: {key}: lbl does not hold the cls label {label} as int32")
    try:
        if json.loads(sample["json"]).get("label") != label:
            problems.append(f"{shard}: {key}: json label differs from cls {label}")
    except ValueError:
        problems.append(f"{shard}: {key}: json is not valid JSON")
    try:
        shape = decode_stored(sample["jpg"]).shape
        if shape != (STORED_SIZE, STORED_SIZE, 3):
            problems.append(f"{shard}: {key}: jpg is {shape}, expected ({STORED_SIZE}, {STORED_SIZE}, 3)")
    except OSError as e:
        problems.append(f"{shard}: {key}: jpg does not decode ({e})")
    return problems


def verify_shard(args: tuple[str, dict[str, Any], int]) -> tuple[list[str], list[str]]:
    """Problems found in one shard, and the keys it holds."""
    root, entry, num_classes = args
    name = entry["name"]
    url = urls.join(root, name)
    fs, path = urls.filesystem(url)
    if not fs.exists(path):
        return [f"{name}: missing"], []
    problems, keys = [], []
    with fs.open(path, "rb") as f:
        data = f.read()
    if len(data) != entry["bytes"]:
        problems.append(f"{name}: {len(data)} bytes, manifest says {entry['bytes']}")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        problems.append(f"{name}: sha256 differs from the manifest (corrupted or replaced)")
    try:
        members = ({**m, "__url__": name} for m in wds.tar_file_iterator(io.BytesIO(data)))
        for sample in wds.group_by_keys(members):
            keys.append(sample["__key__"])
            problems += _check_sample(name, sample, num_classes)
    except Exception as e:  # noqa: BLE001 - any failure to read the tar is a problem to report
        problems.append(f"{name}: unreadable tar after {len(keys)} samples ({e})")
    if len(keys) != entry["samples"]:
        problems.append(f"{name}: {len(keys)} samples, manifest says {entry['samples']}")
    if entry["samples"]:
        idx = index_path(path)
        if not fs.exists(idx):
            problems.append(f"{name}: index file {idx.rsplit('/', 1)[-1]} missing "
                            f"(rebuild: alexnet-prep index --shards {root})")
        else:
            try:
                expected = build_index(io.BytesIO(data), name)
            except ValueError as e:
                expected = str(e)
            if fs.cat_file(idx).decode() != expected:
                problems.append(f"{name}: index file does not match the tar "
                                f"(rebuild: alexnet-prep index --shards {root})")
    return problems, keys


def verify(shards: str, workers: int = 1) -> list[str]:
    """Every problem found, one line each (empty: all good)."""
    shards = shards.rstrip("/")
    try:
        m = manifest.load(shards)
    except manifest.ManifestError as e:
        return [str(e)]
    num_classes = len(m["classes"])
    entries = [s for body in m["splits"].values() for s in body["shards"]]
    jobs = [(shards, e, num_classes) for e in entries]
    problems: list[str] = []
    owner: dict[str, str] = {}
    bar = tqdm(total=len(jobs), unit="shard", desc="verify")
    if workers > 1 and len(jobs) > 1 and not urls.in_process(shards):
        with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            results = list(zip(jobs, pool.imap(verify_shard, jobs)))
    else:
        results = [(j, verify_shard(j)) for j in jobs]
    for job, (p, keys) in results:
        bar.update()
        problems += p
        for k in keys:
            if k in owner:
                problems.append(f"{job[1]['name']}: {k}: also in {owner[k]}")
            owner[k] = job[1]["name"]
    bar.close()
    for split, body in m["splits"].items():
        if len(body["shards"]) != body.get("planned_shards", len(body["shards"])):
            listed = len(body["shards"])
            problems.append(f"{split}: manifest lists {listed} of {body['planned_shards']} shards")
    fs, root = urls.filesystem(shards)
    listed = {e["name"] for e in entries}
    for p in fs.ls(root, detail=False):
        name = p.rsplit("/", 1)[-1]
        if name.endswith(".tar") and name not in listed:
            problems.append(f"{name}: tar not listed in the manifest")
    problems += cards.check(shards, m)
    if m["splits"].get("train", {}).get("shards"):  # pca-stats needs train shards; val-only has none
        problems += _check_statistics(shards, m)
    return problems


def _check_statistics(shards: str, m: dict[str, Any]) -> list[str]:
    """pca.json and mean.npy as training reads them (one shared check), and made from these shards."""
    problems = []
    try:
        pca = read_pca(urls.join(shards, PCA_FILE))
        if pca.get("shards") != manifest.shard_list_hash(m):
            problems.append(f"{PCA_FILE}: made from other train shards (rerun alexnet-prep pca-stats)")
    except StatFileError as e:
        problems.append(str(e))
    try:
        read_mean_image(urls.join(shards, MEAN_FILE))
    except StatFileError as e:
        problems.append(str(e))
    return problems
