"""What other libraries read to open a shard folder as it is: a Hugging Face dataset card
(`README.md`) and timm's `_info.json`, both made from `manifest.json` (format in shards/README.md).

    alexnet-prep shard --src ILSVRC2012 --out shards/   # writes both before manifest.json
    alexnet-prep index --shards shards/                 # rewrites both from manifest.json
    alexnet-prep verify --shards shards/                # a missing or stale one is a problem

    datasets.load_dataset("shards/")                    # splits from the card, cls a ClassLabel
    timm.data.create_dataset("wds/ilsvrc", root="shards/", split="train")

Both are pure functions of the manifest, so `verify` rebuilds them and compares bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import fsspec

from tools import atomic, urls

CARD = "README.md"
TIMM_INFO = "_info.json"
# Marks the card as ours: a README.md without it is the user's and is never overwritten.
CARD_MARK = "<!-- alexnet-prep dataset card: rewritten from manifest.json by `alexnet-prep index` -->"
# The manifest's split names as Hugging Face names them: `datasets` maps files named `val-*` to
# "validation" too (data_files.SPLIT_KEYWORDS), and timm's train.py defaults to --val-split validation.
HF_SPLITS = {"train": "train", "val": "validation", "test": "test"}

# The webdataset builder's columns for one sample (datasets/packaged_modules/webdataset): one per
# member extension, decoded by its DECODERS (cls -> int, json -> dict), plus __key__ and __url__.
# Given features, the builder skips inference; every column it yields must be listed.
_JSON_FIELDS = (("height", "int64"), ("label", "int64"), ("source", "string"), ("width", "int64"),
                ("wnid", "string"))


class CardError(ValueError):
    """A card or info file that cannot be written or read; one line naming the file."""


def _q(s: str) -> str:
    """A YAML double-quoted scalar: JSON's string syntax is valid YAML (no YAML library at prep time)."""
    return json.dumps(s)


def dataset_card(m: dict[str, Any]) -> str:
    """README.md for `datasets`: one `data_files` pattern per split, `cls` a ClassLabel of wnids in
    label order, and each split's sample count (which `datasets` checks after reading)."""
    classes = sorted(m["classes"], key=lambda c: c["index"])
    splits = [(HF_SPLITS[s], s, body) for s, body in m["splits"].items()]
    y = ["---", "configs:", "- config_name: default", "  data_files:"]
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
    y.append("---")
    counts = ", ".join(f"{hf} {body['samples']}" for hf, _, body in splits)
    body = f"""
{CARD_MARK}

# ILSVRC shards made by alexnet-prep

{len(classes)} classes; samples: {counts}. Each sample is `KEY.jpg` (256x256), `KEY.cls` (the class
index in sorted wnid order, here a `ClassLabel` named by wnid), `KEY.lbl` (the same as int32) and
`KEY.json` (wnid, label, source path, original size). `manifest.json` says how they were made.

```python
from datasets import load_dataset
ds = load_dataset("path/to/this/folder")  # train, validation{", test" if "test" in m["splits"] else ""}
ds["train"].features["cls"].int2str(0)    # the wnid of class 0
```

timm reads `_info.json`: `timm.data.create_dataset("wds/ilsvrc", root="path/to/this/folder", split="train")`.
"""
    return "\n".join(y) + "\n" + body


def timm_info(m: dict[str, Any]) -> dict[str, Any]:
    """_info.json as timm's ReaderWds reads it (timm/data/readers/reader_wds.py, `_load_info` and
    `_parse_split_info`): splits -> {name, num_samples, filenames, shard_lengths}, the filenames
    relative to the folder. Each split under its manifest name and its Hugging Face name."""
    splits: dict[str, Any] = {}
    for split, body in m["splits"].items():
        for name in dict.fromkeys((split, HF_SPLITS[split])):
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


def _users_card(data: bytes | None) -> bool:
    return data is not None and CARD_MARK.encode() not in data


def write(shards: str, m: dict[str, Any], log: Callable[[str], None] = print) -> list[str]:
    """Write README.md (unless the user's own is there) and _info.json, each atomically; returns
    the names written."""
    written = []
    card_url = urls.join(shards, CARD)
    if _users_card(_read(card_url)):
        log(f"{card_url}: not written by alexnet-prep, left as it is (datasets reads its YAML header; "
            f"delete it and run alexnet-prep index to get ours)")
    else:
        atomic.write_bytes(card_url, dataset_card(m).encode())
        written.append(CARD)
    atomic.write_bytes(urls.join(shards, TIMM_INFO), _info_bytes(m))
    return written + [TIMM_INFO]


def check(shards: str, m: dict[str, Any]) -> list[str]:
    """Problems with README.md and _info.json: missing, or not what this manifest makes."""
    fix = f"(rewrite: alexnet-prep index --shards {shards})"
    problems = []
    card = _read(urls.join(shards, CARD))
    if card is None:
        problems.append(f"{CARD}: missing {fix}")
    elif not _users_card(card) and card.decode("utf-8", "replace") != dataset_card(m):
        problems.append(f"{CARD}: dataset card differs from manifest.json (stale) {fix}")
    info = _read(urls.join(shards, TIMM_INFO))
    if info is None:
        problems.append(f"{TIMM_INFO}: missing {fix}")
    elif info != _info_bytes(m):
        problems.append(f"{TIMM_INFO}: differs from manifest.json (stale) {fix}")
    return problems
