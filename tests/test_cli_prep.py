"""`alexnet-prep` under faults and bad input (issue 9, prep items 2, 3, 5, 6): one line, a non-zero
exit and no traceback, or the documented recovery; never output lost or silently wrong."""

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import zipfile

import fsspec
import pytest
from click.testing import CliRunner

from tools.cli import main
from tools.sample import make_sample


def _prep(*args: str):
    return CliRunner().invoke(main, list(args))


def _one_line_error(r, *needles: str) -> str:
    """The command failed cleanly: exit != 0, no traceback, one `Error:` line holding every needle."""
    assert r.exit_code != 0 and (r.exception is None or isinstance(r.exception, SystemExit)), r.output
    assert "Traceback" not in r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip() and "%|" not in ln]  # less progress bars
    errors = [ln for ln in lines if ln.startswith("Error")]
    assert len(errors) == 1, r.output
    for n in needles:
        assert n in errors[0], (n, errors[0])
    return errors[0]


def _val_shard(src, out, *extra: str):
    return _prep("shard", "--src", str(src), "--out", str(out), "--split", "val", "--shard-size", "8",
                 "--workers", "1", *extra)


# --- item 2: one run per --out -------------------------------------------------------------------


@pytest.fixture
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_second_run_into_the_same_out_refuses_at_once_and_deletes_nothing(tmp_path, sample_src, live_pid):
    out = tmp_path / "out"
    out.mkdir()
    lock = out / ".prep.lock"
    lock.write_text(json.dumps({"pid": live_pid, "host": socket.gethostname(), "what": "alexnet-prep shard",
                                "started": "2026-12-02T03:00:00+00:00"}))
    theirs = out / ".val-000000.tar.tmp-123-cafecafe"  # the other run's shard being written
    theirs.write_bytes(b"half a shard")
    r = _val_shard(sample_src, out)
    _one_line_error(r, str(lock), f"pid {live_pid} on {socket.gethostname()}", "another run")
    assert "listing the images" not in r.output  # refused before the (minutes-long) listing
    assert theirs.read_bytes() == b"half a shard" and json.loads(lock.read_text())["pid"] == live_pid
    assert sorted(p.name for p in out.iterdir()) == sorted([lock.name, theirs.name])


def test_stale_lock_of_a_killed_run_is_taken_over_saying_so(tmp_path, sample_src):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / ".prep.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    (out / ".val-000001.tar.tmp-1-deadbeef").write_bytes(b"left by the killed run")
    r = _val_shard(sample_src, out)
    assert r.exit_code == 0, r.output
    assert f"taking over the lock of a run (pid {dead.pid}" in r.output
    assert not (out / ".prep.lock").exists() and not list(out.glob(".*tmp*"))
    assert (out / "manifest.json").exists()


def test_a_node_never_deletes_another_nodes_temp_files(tmp_path, sample_src):
    out = tmp_path / "nodes"
    out.mkdir()
    other = out / ".val-000001.tar.tmp-999-0ddba11"  # node 1 of 2 writing its shard right now
    other.write_bytes(b"node 1 in flight")
    mine = out / ".val-000000.tar.tmp-998-deadbeef"  # left by a killed run of node 0
    mine.write_bytes(b"node 0, killed")
    r = _val_shard(sample_src, out, "--num-nodes", "2", "--node-rank", "0")
    assert r.exit_code == 0, r.output
    assert other.read_bytes() == b"node 1 in flight" and not mine.exists()


# --- item 3: a split named twice -------------------------------------------------------------------


def test_a_split_named_twice_is_refused_before_any_work(tmp_path, sample_src):
    r = _prep("shard", "--src", str(sample_src), "--out", str(tmp_path / "o"), "--split", "train,val,train")
    _one_line_error(r, "--split", "train given more than once")
    assert not (tmp_path / "o").exists()


# --- item 5: one line, no traceback -------------------------------------------------------------------


def test_index_on_an_unwritable_folder(tmp_path, sample_shards, monkeypatch):
    """Tests run as root, for whom chmod -w changes nothing: the write itself is made to fail as a
    read-only folder makes it fail (PermissionError from opening the temp file)."""
    import tools.atomic

    copy = tmp_path / "s"
    shutil.copytree(sample_shards, copy)

    def read_only(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(tools.atomic, "open", read_only, raising=False)
    r = _prep("index", "--shards", str(copy))
    _one_line_error(r, str(copy), "cannot write the index of", "Permission denied")


@pytest.mark.parametrize("seed", ["-1", str(2**63), str(2**64 + 5)])
@pytest.mark.parametrize("command", ["shard", "sample"])
def test_seed_out_of_range(tmp_path, sample_src, command, seed):
    args = ["--src", str(sample_src)] if command == "shard" else []
    r = _prep(command, *args, "--out", str(tmp_path / "o"), "--seed", seed)
    _one_line_error(r, "--seed", seed)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("option", ["--src", "--out", "--shards"])
def test_unknown_protocol(tmp_path, sample_src, option):
    url = "nosuchfs://bucket/x"
    if option == "--shards":
        for command in ("verify", "pca-stats", "index", "merge-manifest"):
            _one_line_error(_prep(command, "--shards", url), url, "unknown fsspec protocol 'nosuchfs'")
        return
    args = {"--src": ["--src", url, "--out", str(tmp_path / "o")],
            "--out": ["--src", str(sample_src), "--out", url]}[option]
    _one_line_error(_prep("shard", *args), url, "unknown fsspec protocol 'nosuchfs'")


def test_protocol_whose_package_is_missing_names_it(tmp_path, sample_src, monkeypatch):
    from fsspec.registry import known_implementations

    # s3fs absent even where it is installed: a None in sys.modules makes its import fail.
    monkeypatch.setitem(sys.modules, "s3fs", None)
    assert known_implementations["s3"]["class"].startswith("s3fs.")
    r = _prep("shard", "--src", str(sample_src), "--out", "s3://bucket/shards")
    _one_line_error(r, "pip install s3fs")
    _one_line_error(_prep("verify", "--shards", "simplecache::s3://bucket/shards"), "pip install s3fs")


def test_merge_manifest_on_a_missing_folder(tmp_path):
    _one_line_error(_prep("merge-manifest", "--shards", str(tmp_path / "absent")), "no such folder")


def test_sample_out_on_an_unwritable_path(tmp_path):
    """A path under a regular file cannot be created, by root either (NotADirectoryError)."""
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "sample"
    _one_line_error(_prep("sample", "--out", str(out), "--classes", "2"), f"--out {out}", "cannot write")


def test_num_nodes_zero(tmp_path, sample_src):
    r = _prep("shard", "--src", str(sample_src), "--out", str(tmp_path / "o"), "--num-nodes", "0")
    line = _one_line_error(r, "--num-nodes must be >= 1, got 0")
    assert "0..-1" not in line


# --- item 6: fsspec URLs -------------------------------------------------------------------------------


def test_memory_out_with_several_workers_keeps_its_shards():
    """Was: exit 0, a manifest listing shards that were written in worker processes and lost."""
    make_sample("memory://w/src", layout="folders", classes=2, train_per_class=6, val_per_class=4)
    r = _prep("shard", "--src", "memory://w/src", "--out", "memory://w/out", "--shard-size", "4",
              "--workers", "2")
    assert r.exit_code == 0, r.output
    assert "writing with 1 worker" in r.output
    fs = fsspec.filesystem("memory")
    m = json.loads(fs.cat_file("/w/out/manifest.json"))
    names = [s["name"] for b in m["splits"].values() for s in b["shards"]]
    assert len(names) >= 4 and all(fs.exists(f"/w/out/{n}") for n in names)
    assert _prep("pca-stats", "--shards", "memory://w/out", "--workers", "2").exit_code == 0
    r = _prep("verify", "--shards", "memory://w/out", "--workers", "2")
    assert r.exit_code == 0, r.output


def _zip_folder(folder, zip_path):
    with zipfile.ZipFile(zip_path, "w") as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(folder).as_posix())


def _tar_samples(folder):
    out = {}
    for tar in sorted(folder.glob("*.tar")):
        with tarfile.open(tar) as t:
            out[tar.name] = sorted(t.getnames())
    return out


def test_chained_urls_for_src_and_out(tmp_path):
    """--src inside a zip (zip://::file://...), --out through dir:// and file://: the same shards as
    plain paths. Joined by hand, the names landed after the last link (file:///x.zip/train/...)."""
    src = tmp_path / "src"
    make_sample(str(src), layout="folders", classes=2, train_per_class=6, val_per_class=2, seed=2)
    _zip_folder(src, tmp_path / "copy.zip")
    args = ["--shard-size", "4", "--workers", "2"]
    plain = _prep("shard", "--src", str(src), "--out", str(tmp_path / "plain"), *args)
    assert plain.exit_code == 0, plain.output
    (tmp_path / "root").mkdir()
    chained = _prep("shard", "--src", f"zip://::file://{tmp_path}/copy.zip",
                    "--out", f"dir://shards::file://{tmp_path}/root", *args)
    assert chained.exit_code == 0, chained.output
    out = tmp_path / "root" / "shards"
    assert _tar_samples(out) == _tar_samples(tmp_path / "plain")
    assert [p.name for p in (tmp_path / "root").iterdir()] == ["shards"]  # no stray folders
    for shards in (f"dir://shards::file://{tmp_path}/root", f"file://{out}"):
        for command in ("pca-stats", "verify"):
            r = _prep(command, "--shards", shards, "--workers", "1")
            assert r.exit_code == 0, (command, shards, r.output)
    m = json.loads((out / "manifest.json").read_text())
    sources = [json.loads(s["json"])["source"] for s in _iter_samples(out / "train-000000.tar")]
    assert all(not os.path.isabs(s) for s in sources) and m["splits"]["train"]["samples"] >= 11


def _iter_samples(tar_path):
    with tarfile.open(tar_path) as t:
        yield from ({"json": t.extractfile(x).read()} for x in t if x.name.endswith(".json"))


def test_file_url_out_leaves_no_stray_folder(tmp_path, sample_src, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = _val_shard(sample_src, f"file://{tmp_path}/out")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (tmp_path / "out" / "manifest.json").exists()


def test_bare_dir_prefix_is_refused_in_one_line(tmp_path, sample_src):
    """fsspec reads dir::file:///x as /x//x; a run into it would write a nested copy of the path."""
    r = _val_shard(sample_src, f"dir::file://{tmp_path}/out")
    _one_line_error(r, "dir://<path inside>::<root URL>")
    assert not (tmp_path / "out").exists()


def test_sample_into_a_chained_out_url(tmp_path):
    """`sample` wrote its tars through fs.unstrip_protocol, which drops a chain's other links."""
    (tmp_path / "root").mkdir()
    r = _prep("sample", "--out", f"dir://ilsvrc::file://{tmp_path}/root", "--classes", "2",
              "--train-per-class", "6", "--val-per-class", "1")
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in (tmp_path / "root" / "ilsvrc").iterdir())
    assert "ILSVRC2012_img_train.tar" in names and "ILSVRC2012_devkit_t12.tar.gz" in names


def test_sample_year_2010_with_a_test_split(tmp_path):
    r = _prep("sample", "--out", str(tmp_path / "s"), "--year", "2010", "--classes", "2", "--train-per-class",
              "4", "--val-per-class", "1", "--test-per-class", "2")
    assert r.exit_code == 0, r.output
    assert r.output.strip().endswith("8 train + 2 val images + 4 test images")
    assert (tmp_path / "s" / "ILSVRC2010_images_test.tar").exists()
    r = _prep("sample", "--out", str(tmp_path / "t"), "--test-per-class", "2")
    _one_line_error(r, "--test-per-class", "--year 2010")
    assert not (tmp_path / "t").exists()
