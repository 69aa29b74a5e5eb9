"""`manifest.json`: what a shard folder holds, from what, and how (format in shards/README.md).

It is written last, after every shard of the run has its completion record, so its presence means
the folder is complete. A multi-node run writes one `manifest.node-R-of-K.json` per node and
`merge-manifest` joins them once every node is done.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tools import atomic, urls

FORMAT = 1
MANIFEST = "manifest.json"
TOOL_VERSION = "0.1.0"


class ManifestError(ValueError):
    pass


def node_manifest_name(node_rank: int, num_nodes: int) -> str:
    return f"manifest.node-{node_rank}-of-{num_nodes}.json"


def build(options: dict[str, Any], classes: list[dict[str, Any]], planned: dict[str, int],
          records: list[dict[str, Any]]) -> dict[str, Any]:
    """Assemble a manifest from the shard completion records; `planned` = shard count per split."""
    splits: dict[str, Any] = {}
    for split, count in planned.items():
        recs = sorted((r for r in records if r["split"] == split), key=lambda r: r["name"])
        splits[split] = {
            "planned_shards": count,
            "samples": sum(r["samples"] for r in recs),
            "skipped": [s for r in recs for s in r["skipped"]],
            # patch_images.tar members stored in place of their originals; completion records of
            # runs made before replacements were recorded have no such list.
            "replaced": sorted((s for r in recs for s in r.get("replaced", [])), key=lambda s: s["key"]),
            "shards": [{k: r[k] for k in ("name", "samples", "bytes", "sha256", "index", "pixel_sum", "sums")}
                       for r in recs],
        }
    return {
        "format": FORMAT,
        "tool": {"name": "alexnet-prep", "version": TOOL_VERSION},
        "options": options,
        "classes": classes,
        "splits": splits,
    }


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Join node manifests; every planned shard must come from exactly one node."""
    if not parts:
        raise ManifestError("no node manifests to merge")
    first = parts[0]
    for p in parts[1:]:
        if p["options"] != first["options"] or p["classes"] != first["classes"]:
            raise ManifestError("node manifests were made with different options or classes")
    records = [dict(s, split=split, skipped=[], replaced=[]) for p in parts
               for split, body in p["splits"].items() for s in body["shards"]]
    planned = {split: body["planned_shards"] for split, body in first["splits"].items()}
    merged = build(first["options"], first["classes"], planned, records)
    for split, body in merged["splits"].items():
        names = [s["name"] for s in body["shards"]]
        if len(names) != len(set(names)):
            raise ManifestError(f"{split}: a shard appears in more than one node manifest")
        if len(names) != planned[split]:
            raise ManifestError(f"{split}: {len(names)} of {planned[split]} planned shards present; "
                                "a node has not finished")
        for field in ("skipped", "replaced"):
            body[field] = sorted((s for p in parts for s in p["splits"][split].get(field, [])),
                                 key=lambda s: s["key"])
    options = dict(merged["options"], num_nodes=1, node_rank=0)
    merged["options"] = options
    _merge_holdout(parts, merged)
    return merged


def _merge_holdout(parts: list[dict[str, Any]], merged: dict[str, Any]) -> None:
    """Every node lists the whole source and carves the same held-out split: keep its one record."""
    records = [p.get("holdout") for p in parts]
    if any(r != records[0] for r in records[1:]):
        raise ManifestError("node manifests record different held-out splits (holdout)")
    if records[0] is not None:
        merged["holdout"] = records[0]


def load(shards: str) -> dict[str, Any]:
    url = urls.join(shards.rstrip("/"), MANIFEST)
    fs, path = urls.filesystem(url)
    if not fs.exists(path):
        raise ManifestError(f"{url}: no manifest (run `alexnet-prep shard` first, or it did not finish)")
    try:
        m = atomic.read_json(url)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ManifestError(f"{url}: not valid JSON ({e})") from e
    if m.get("format") != FORMAT or "splits" not in m or "classes" not in m:
        raise ManifestError(f"{url}: not an alexnet-prep manifest of format {FORMAT}")
    return m


def shard_list_hash(manifest: dict[str, Any], split: str = "train") -> str:
    """A short identity of a split's shards (names + sha256), recorded in pca.json and run folders."""
    h = hashlib.sha256()
    for s in manifest["splits"].get(split, {}).get("shards", []):
        h.update(f"{s['name']} {s['sha256']}\n".encode())
    return h.hexdigest()
