import io

import pytest
import webdataset as wds
from wds2idx import IndexCreator  # DALI's own index tool, shipped with the DALI wheel

from tools.index import build_index, index_path, write_index
from tools.writer import sample_dict


def _tar(path, n=5):
    with open(path, "wb") as f, wds.TarWriter(f, mtime=0, encoder=False) as w:
        for i in range(n):
            w.write(sample_dict(f"n0000000{i}_{i}", b"\xff\xd8" + bytes(100 * i + 1), i, {"label": i}))


def test_index_equals_dalis_wds2idx(tmp_path):
    tar = tmp_path / "train-000000.tar"
    _tar(tar)
    ours = write_index(str(tar))
    assert ours == str(tmp_path / "train-000000.idx")
    with IndexCreator(str(tar), str(tmp_path / "dali.idx"), verbose=False) as ic:
        ic.create_index()
    assert (tmp_path / "train-000000.idx").read_text() == (tmp_path / "dali.idx").read_text()
    assert (tmp_path / "dali.idx").read_text().startswith("v1.2 5\n")


def test_index_on_fsspec_memory_url():
    import fsspec

    buf = io.BytesIO()
    with wds.TarWriter(buf, mtime=0, encoder=False) as w:
        w.write(sample_dict("k1", b"x", 3, {}))
    fsspec.filesystem("memory").pipe("/idx/a.tar", buf.getvalue())
    write_index("memory://idx/a.tar")
    text = fsspec.filesystem("memory").cat_file("/idx/a.idx").decode()
    assert text.splitlines()[0] == "v1.2 1" and " k1.jpg" in text


def test_index_refuses_empty_and_broken_tars(tmp_path):
    with pytest.raises(ValueError, match="empty tar"):
        build_index(io.BytesIO(bytes(10240)), "e.tar")
    with pytest.raises(ValueError, match="not a readable tar"):
        build_index(io.BytesIO(b"garbage" * 100), "g.tar")


def test_index_path():
    assert index_path("s/val-000001.tar") == "s/val-000001.idx"
