"""The one exception the loaders raise, and the translation of DALI's errors into it.

DALI reports a failing sample in a long multi-line message (operator, Python traceback, C++
location). What identifies the sample differs by failure (measured, DALI 2.4):

- a decoder failure on a sample usually carries its `source_info`, `<tar>:<offset>:<member>`;
- a sample without a requested member: `Underful sample detected at index file at "<idx>" line N`
  (N counts the sample lines from 1, after the header);
- an index pointing past the end of its tar: `Malformed index file at "<idx>" line N ...`;
- a JPEG whose header nvImageCodec cannot parse: `nvImageCodec failure: '#3'`, naming nothing
  (the loader then finds the sample by re-reading, see graph.find_bad_jpeg).

`from_dali` turns these into one line naming the shard and, where known, the key.
"""

from __future__ import annotations

import re

_SOURCE_INFO = re.compile(r"(?P<shard>/[^\s'\"]*?\.tar):(?P<offset>\d+):(?P<member>[^\s'\"]+)")
_INDEX_LINE = re.compile(r"index file at \"(?P<index>[^\"]+\.idx)\" line (?P<line>\d+)")
_TAR = re.compile(r"(?P<shard>/[^\s'\"]*?\.tar)\b")
_NOISE = ("C++ context", "Current pipeline object", "Critical error", "Error in ", "which was used",
          "File \"", "encountered:")


class PipelineError(RuntimeError):
    """A shard, a sample or a setting the pipeline cannot use; the message is one line."""


def key_of(member: str) -> str:
    """Sample key of a tar member: the basename up to its first dot (webdataset's rule)."""
    return member.rsplit("/", 1)[-1].split(".", 1)[0]


def reason(text: str, limit: int = 200) -> str:
    """The informative part of a DALI message, on one line: what follows "encountered:"."""
    body = text.split("encountered:", 1)[-1]
    lines = [ln.strip() for ln in body.splitlines()]
    kept = [ln for ln in lines if ln and not ln.startswith(_NOISE) and "dali/" not in ln]
    line = " ".join(kept or [ln for ln in lines if ln] or [text.strip()])
    line = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(line.split()))
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _index_sample(index: str, line: int) -> tuple[str, list[str]] | None:
    """Key and member extensions of sample line `line` (1 = first sample) of a DALI index file."""
    try:
        with open(index, encoding="utf-8") as f:
            for number, text in enumerate(f):
                if number == line:
                    fields = text.split()
                    exts = fields[0::4]
                    return (key_of(fields[3]) if len(fields) >= 4 else "?"), exts
    except OSError:
        return None
    return None


def from_dali(error: BaseException, shards: list[str]) -> PipelineError:
    """A one-line PipelineError naming the shard (and key) a DALI runtime error came from."""
    text = str(error)
    why = reason(text)
    at_index = _INDEX_LINE.search(text)
    if at_index:
        shard = at_index["index"][: -len(".idx")] + ".tar"
        if "nderful" in text:  # DALI's spelling: "Underful sample"
            found = _index_sample(at_index["index"], int(at_index["line"]))
            if found:
                key, exts = found
                has = ", ".join(exts)
                return PipelineError(f"{shard}: {key}: sample lacks a jpg or lbl member (has {has})")
        return PipelineError(f"{shard}: {why}")
    info = _SOURCE_INFO.search(text)
    if info:
        decoding = "decoder" in text or "decode" in why.lower()
        what = "image does not decode" if decoding else "sample cannot be processed"
        return PipelineError(f"{info['shard']}: {key_of(info['member'])}: {what} ({why})")
    tar = _TAR.search(text)
    if tar:
        return PipelineError(f"{tar['shard']}: {why}")
    listed = ", ".join(shards[:3]) + (", ..." if len(shards) > 3 else "")
    return PipelineError(f"reading {listed}: {why}")


def names_a_shard(error: BaseException) -> bool:
    return bool(_TAR.search(str(error)) or _INDEX_LINE.search(str(error)))
