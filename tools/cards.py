"""What other libraries read to open a shard folder as it is: the Hugging Face dataset card's YAML
(`.huggingface.yaml`) and timm's `_info.json`, both made from `manifest.json` (shards/README.md).

    alexnet-prep shard --src ILSVRC2012 --out shards/   # writes both before manifest.json
    alexnet-prep index --shards shards/                 # rewrites both from manifest.json
    alexnet-prep verify --shards shards/                # a missing or stale one is a problem

    datasets.load_dataset("shards/")                    # splits from the card, cls a ClassLabel
    timm.data.create_dataset("wds/ilsvrc", root="shards/", split="train")

Both are pure functions of the manifest, so `verify` rebuilds them and compares bytes.
"""

from __future__ import annotations

import json
from typing import Any

import fsspec

from tools import atomic, urls
from tools.manifest import MANIFEST

# The dataset card's YAML header as a standalone file: datasets merges it over README.md's header,
# locally and on the Hub (load.py, REPOYAML_FILENAME; huggingface/datasets#6557). Not README.md
# itself: the default --out, shards/, holds this project's format README, and a user's own README
# is theirs. A hidden name, so datasets' default file patterns skip it (data_files.resolve_pattern).
CARD = ".huggingface.yaml"
TIMM_INFO = "_info.json"
# The manifest's split names as Hugging Face names them (any other keeps its name): `datasets` maps
# files named `val-*` to "validation" too (data_files.SPLIT_KEYWORDS), and timm's train.py defaults
# to --val-split validation.
HF_SPLITS = {"train": "train", "val": "validation", "test": "test"}

# The webdataset builder's columns for one sample (datasets/packaged_modules/webdataset): one per
# member extension, decoded by its DECODERS (cls -> int, json -> dict), plus __key__ and __url__.
# Given features, the builder skips inference; every column it yields must be listed.
_JSON_FIELDS = (("height", "int64"), ("label", "int64"), ("source", "string"), ("width", "int64"),
                ("wnid", "string"))


def _q(s: str) -> str:
    """A YAML double-quoted scalar: JSON's string syntax is valid YAML (no YAML library at prep time)."""
    return json.dumps(s)


def dataset_card(m: dict[str, Any]) -> str:
    """The card's YAML for `datasets`: one `data_files` pattern per split, `cls` a ClassLabel of
    wnids in label order, and each split's sample count (which `datasets` checks after reading)."""
    classes = sorted(m["classes"], key=lambda c: c["index"])
    # A split without shards is left out: datasets refuses a pattern that matches no file. The order
    # is fixed, not the manifest's: `shard` holds its splits in --split order, manifest.json sorted.
    known = list(HF_SPLITS)
    order = sorted(m["splits"], key=lambda s: (known.index(s) if s in known else len(known), s))
    splits = [(HF_SPLITS.get(s, s), s, m["splits"][s]) for s in order if m["splits"][s]["shards"]]
    y = [f"# Made by alexnet-prep from {MANIFEST}; rewritten by `alexnet-prep index`, checked by verify.",
         "configs:", "- config_name: default", "  data_files:"]
    for hf, split, _ in splits:
        y += [f"  - split: {hf}", f"    path: {_q(f'{split}-*.tar')}"]
    y += ["dataset_info:", "  config_name: default", "  features:",
          "  - name: cls", "    dtype:", "      class_label:", "        names:"]
    y += [f"          {_q(str(c['index']))}: {_q(c['wnid'])}" for c in classes]
    y += ["  - name: jpg", "    dtype: image", "  - name: json", "    struct:"]
    for name, dtype in _JSON_FIELDS:
        y += [f"    - name: {name}", f"      dtype: {dtype}"]
    y += ["  - name: lbl", "    dtype: binary", "  - name: __key__", "    dtype: string",
          "  - name: __url__", "    dtype: string", "  splits:"]
    for hf, _, body in splits:
        # datasets checks num_examples after reading (utils/info_utils.verify_splits) and drops a
        # split entry without num_bytes (splits.SplitDict._from_yaml_list): the shards' bytes stand in.
        size = sum(s["bytes"] for s in body["shards"])
        y += [f"  - name: {hf}", f"    num_bytes: {size}", f"    num_examples: {body['samples']}"]
    return "\n".join(y) + "\n"


def timm_info(m: dict[str, Any]) -> dict[str, Any]:
    """_info.json as timm's ReaderWds reads it (timm/data/readers/reader_wds.py, `_load_info` and
    `_parse_split_info`): splits -> {name, num_samples, filenames, shard_lengths}, the filenames
    relative to the folder. Each split under its manifest name and its Hugging Face name."""
    splits: dict[str, Any] = {}
    for split, body in m["splits"].items():
        for name in dict.fromkeys((split, HF_SPLITS.get(split, split))):
            splits[name] = {"name": name, "num_samples": body["samples"],
                            "filenames": [s["name"] for s in body["shards"]],
                            "shard_lengths": [s["samples"] for s in body["shards"]]}
    return {"name": "ilsvrc", "num_classes": len(m["classes"]),
            "classes": [c["wnid"] for c in sorted(m["classes"], key=lambda c: c["index"])], "splits": splits}


def _info_bytes(m: dict[str, Any]) -> bytes:
    return (json.dumps(timm_info(m), indent=1, sort_keys=True) + "\n").encode()


def _read(url: str) -> bytes | None:
    fs, path = urls.filesystem(url)
    if not fs.exists(path):
        return None
    with fsspec.open(url, "rb") as f:
        return f.read()


def write(shards: str, m: dict[str, Any]) -> list[str]:
    """Write .huggingface.yaml and _info.json, each atomically; returns their names."""
    atomic.write_bytes(urls.join(shards, CARD), dataset_card(m).encode())
    atomic.write_bytes(urls.join(shards, TIMM_INFO), _info_bytes(m))
    return [CARD, TIMM_INFO]


def check(shards: str, m: dict[str, Any]) -> list[str]:
    """Problems with .huggingface.yaml and _info.json: missing, or not what this manifest makes."""
    fix = f"(rewrite: alexnet-prep index --shards {shards})"
    problems = []
    card = _read(urls.join(shards, CARD))
    if card is None:
        problems.append(f"{CARD}: missing {fix}")
    elif card != dataset_card(m).encode():
        problems.append(f"{CARD}: dataset card differs from {MANIFEST} (stale) {fix}")
    info = _read(urls.join(shards, TIMM_INFO))
    if info is None:
        problems.append(f"{TIMM_INFO}: missing {fix}")
    elif info != _info_bytes(m):
        problems.append(f"{TIMM_INFO}: differs from {MANIFEST} (stale) {fix}")
    return problems
