import json
import shutil
import tarfile

import numpy as np
import pytest
from click.testing import CliRunner

from tools.cli import main
from tools.manifest import ManifestError
from tools.resize import decode_stored
from tools.stats import StatsError, compute


def _train_pixels(shards) -> np.ndarray:
    m = json.loads((shards / "manifest.json").read_text())
    images = []
    for entry in m["splits"]["train"]["shards"]:
        with tarfile.open(shards / entry["name"]) as t:
            images += [decode_stored(t.extractfile(x).read()) for x in t if x.name.endswith(".jpg")]
    return np.stack(images).astype(np.float64)


def test_pca_stats_equal_a_direct_numpy_computation(sample_shards):
    pca = json.loads((sample_shards / "pca.json").read_text())
    images = _train_pixels(sample_shards)
    flat = images.reshape(-1, 3)
    mean, cov = flat.mean(axis=0), np.cov(flat, rowvar=False, bias=True)
    np.testing.assert_allclose(pca["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(pca["std"], flat.std(axis=0), rtol=1e-6)
    np.testing.assert_allclose(pca["cov"], cov, rtol=1e-6)
    eigval, eigvec = np.array(pca["eigval"]), np.array(pca["eigvec"])
    np.testing.assert_allclose(eigval, np.sort(np.linalg.eigvalsh(cov))[::-1], rtol=1e-6)
    assert list(eigval) == sorted(eigval, reverse=True)
    np.testing.assert_allclose(cov @ eigvec, eigvec * eigval, rtol=1e-6, atol=1e-6)  # columns
    assert pca["pixels"] == flat.shape[0] and pca["scale"] == "0-255"
    mean_image = np.load(sample_shards / "mean.npy")
    assert mean_image.shape == (256, 256, 3) and mean_image.dtype == np.float32
    np.testing.assert_allclose(mean_image, images.mean(axis=0), rtol=1e-6)


def test_fast_path_from_manifest_agrees(sample_shards, tmp_path):
    copy = tmp_path / "s"
    shutil.copytree(sample_shards, copy)
    slow = json.loads((copy / "pca.json").read_text())
    slow_mean = np.load(copy / "mean.npy")
    result = CliRunner().invoke(main, ["pca-stats", "--shards", str(copy), "--from-manifest"])
    assert result.exit_code == 0, result.output
    fast = json.loads((copy / "pca.json").read_text())
    for k in ("mean", "std", "cov", "eigval", "eigvec"):
        np.testing.assert_allclose(fast[k], slow[k], rtol=1e-9, atol=1e-9)
    assert fast["pixels"] == slow["pixels"] and fast["shards"] == slow["shards"]
    np.testing.assert_array_equal(np.load(copy / "mean.npy"), slow_mean)


def test_parallel_slow_path_agrees(sample_shards, tmp_path):
    copy = tmp_path / "s"
    shutil.copytree(sample_shards, copy)
    serial = json.loads((copy / "pca.json").read_text())
    compute(str(copy), workers=2)
    assert json.loads((copy / "pca.json").read_text()) == serial


def test_missing_manifest_and_no_train_are_clear_errors(tmp_path, sample_shards):
    with pytest.raises(ManifestError, match=f"{tmp_path / 'manifest.json'}: no manifest"):
        compute(str(tmp_path))
    copy = tmp_path / "v"
    shutil.copytree(sample_shards, copy)
    m = json.loads((copy / "manifest.json").read_text())
    del m["splits"]["train"]
    (copy / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StatsError, match="no train shards"):
        compute(str(copy))


@pytest.mark.parametrize("cut", ["mid-member", "member-boundary"])
@pytest.mark.parametrize("workers", [1, 2])
def test_truncated_shard_is_one_line_naming_it(sample_shards, tmp_path, cut, workers):
    """Issue 9, item 5: was a tarfile traceback (mid-member) or silently fewer pixels (boundary)."""
    copy = tmp_path / "s"
    shutil.copytree(sample_shards, copy)
    tar = copy / "train-000001.tar"
    data = tar.read_bytes()
    with tarfile.open(tar) as t:
        members = t.getmembers()
    boundary = members[len(members) // 2].offset  # a header start: the tar just looks shorter
    tar.write_bytes(data[: boundary + 700] if cut == "mid-member" else data[:boundary] + bytes(1024))
    before = (copy / "pca.json").read_bytes()
    r = CliRunner().invoke(main, ["pca-stats", "--shards", str(copy), "--workers", str(workers)])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip() and "%|" not in ln]  # less the progress bar
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "train-000001.tar" in lines[0]
    assert (copy / "pca.json").read_bytes() == before  # nothing written


@pytest.mark.parametrize("fill", ["random", "white"])
def test_pixel_sums_are_exact_integers(fill):
    """writer.PixelSums (uint16 products summed by OpenCV) equals integer arithmetic to the last unit, also
    for an all-white image, where float32 accumulation of 65536 products of 255 * 255 would round."""
    from tools.writer import PixelSums

    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (256, 256, 3), np.uint8) if fill == "random"
              else np.full((256, 256, 3), 255, np.uint8) for _ in range(3)]
    sums = PixelSums(per_pixel=True)
    for im in images:
        sums.add(im)
    flat = np.concatenate([im.reshape(-1, 3) for im in images]).astype(np.int64)
    assert sums.pixels == flat.shape[0]
    assert sums.rgb.tolist() == flat.sum(axis=0).tolist()
    assert sums.outer.tolist() == (flat.T @ flat).tolist()
    assert sums.image.tolist() == sum(im.astype(np.int64) for im in images).tolist()
