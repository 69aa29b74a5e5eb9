"""The synthetic ILSVRC sample: reproducible, real-shaped, quirky where the real data is, learnable."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import fsspec
import numpy as np
import pytest
import scipy.io
from PIL import Image, ImageFile

from tools.layouts import parse_meta
from tools.sample import QUIRKS, make_sample

SMALL = {"classes": 4, "train_per_class": 5, "val_per_class": 2}


def tree(url: str) -> dict[str, bytes]:
    fs, root = fsspec.core.url_to_fs(url)
    return {p[len(root) :]: fs.cat_file(p) for p in sorted(fs.find(root))}


def tar_member(tar_path: Path, inner: str, member: str | None = None) -> bytes:
    """`member` of the inner tar `inner` of tar_path, or `inner` itself when member is None."""
    with tarfile.open(tar_path) as outer:
        data = outer.extractfile(inner).read()
    if member is None:
        return data
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.extractfile(member).read()


def raw_images(root: Path, train: str = "ILSVRC2012_img_train.tar",
               val: str = "ILSVRC2012_img_val.tar") -> dict[str, bytes]:
    """key -> bytes of every image in a raw sample (train and val); the val tar's members may sit
    under a folder (2010's `val/`)."""
    images = {}
    with tarfile.open(root / train) as outer:
        for m in outer:
            with tarfile.open(fileobj=outer.extractfile(m)) as inner:
                images.update({n.name[:-5]: inner.extractfile(n).read() for n in inner})
    with tarfile.open(root / val) as tar:
        images.update({n.name.rsplit("/", 1)[-1][:-5]: tar.extractfile(n).read() for n in tar if n.isfile()})
    return images


def devkit_files(root: Path, name: str = "ILSVRC2012_devkit_t12.tar.gz") -> dict[str, bytes]:
    with tarfile.open(root / name) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("sample") / "raw"
    return root, make_sample(str(root), **SMALL)


def test_same_seed_gives_identical_bytes(raw: tuple[Path, dict], tmp_path: Path) -> None:
    root, summary = raw
    again = make_sample(str(tmp_path / "again"), **SMALL)
    assert again == summary
    assert tree(str(tmp_path / "again")) == tree(str(root))
    other = make_sample(str(tmp_path / "other"), seed=1, **SMALL)
    assert other["wnids"] != summary["wnids"]
    a, b = tree(str(root)), tree(str(tmp_path / "other"))
    assert a["/ILSVRC2012_img_val.tar"] != b["/ILSVRC2012_img_val.tar"]


def test_loose_layouts_reproducible_in_memory() -> None:
    first = make_sample("memory://sample-a/kaggle", layout="kaggle", **SMALL)
    second = make_sample("memory://sample-b/kaggle", layout="kaggle", **SMALL)
    assert first == second
    assert tree("memory://sample-a/kaggle") == tree("memory://sample-b/kaggle")
    assert "/LOC_val_solution.csv" in tree("memory://sample-a/kaggle")


def test_each_quirk_is_what_it_claims(raw: tuple[Path, dict], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    root, summary = raw
    quirks = {q["kind"]: q for q in summary["quirks"]}
    assert set(quirks) == set(QUIRKS)
    images = raw_images(root)
    for q in quirks.values():
        tar_name, inner, member = q["path"].split("/")
        assert tar_name == "ILSVRC2012_img_train.tar"
        assert (inner, member) == (f"{q['wnid']}.tar", f"{q['key']}.JPEG")
        assert images[q["key"]] == tar_member(root / tar_name, inner, member)

    def opened(kind: str) -> Image.Image:
        return Image.open(io.BytesIO(images[quirks[kind]["key"]]))

    assert (opened("cmyk").format, opened("cmyk").mode) == ("JPEG", "CMYK")
    assert (opened("grayscale").format, opened("grayscale").mode) == ("JPEG", "L")
    assert opened("png-as-jpeg").format == "PNG"
    truncated = images[quirks["truncated"]["key"]]
    assert truncated[:2] == b"\xff\xd8" and truncated[-2:] != b"\xff\xd9"  # starts as a JPEG, no end marker
    assert min(opened("small").size) < 256
    w, h = opened("extreme-aspect").size
    assert max(w, h) / min(w, h) >= 6
    # Only the truncated one fails a full decode.
    failed = set()
    for key, data in images.items():
        try:
            Image.open(io.BytesIO(data)).load()
        except OSError:
            failed.add(key)
    assert failed == {quirks["truncated"]["key"]}


def test_devkit_ids_follow_no_sorted_order(raw: tuple[Path, dict]) -> None:
    root, summary = raw
    files = devkit_files(root)
    assert {
        "ILSVRC2012_devkit_t12/data/meta.mat",
        "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt",
    } <= set(files)
    meta = files["ILSVRC2012_devkit_t12/data/meta.mat"]
    synsets = scipy.io.loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
    assert synsets.dtype.names == (
        "ILSVRC2012_ID",
        "WNID",
        "words",
        "gloss",
        "num_children",
        "children",
        "wordnet_height",
        "num_train_images",
    )
    children = [int(s["num_children"]) for s in synsets]
    n = SMALL["classes"]
    assert children[:n] == [0] * n and len(children) > n and all(c > 0 for c in children[n:])
    leaf_ids = {str(s["WNID"]): int(s["ILSVRC2012_ID"]) for s in synsets[:n]}
    assert sorted(leaf_ids.values()) == list(range(1, n + 1))
    assert [leaf_ids[w] for w in summary["wnids"]] != list(range(1, n + 1))
    # The layouts' reader, the one used on the real file, agrees.
    year, leaves = parse_meta(meta, "meta.mat")
    assert year == 2012 and {w: i for i, (w, _) in leaves.items()} == leaf_ids
    assert all(", " in words for _, words in leaves.values())
    truth = files["ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"].decode().split()
    assert len(truth) == summary["val"] and set(map(int, truth)) == set(range(1, n + 1))


def test_val_numbered_in_shuffled_class_order(raw: tuple[Path, dict]) -> None:
    root, summary = raw
    with tarfile.open(root / "ILSVRC2012_img_val.tar") as tar:
        names = tar.getnames()
    assert names == [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, summary["val"] + 1)]
    truth = devkit_files(root)["ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"].split()
    runs = sum(a != b for a, b in zip(truth, truth[1:])) + 1
    assert runs > SMALL["classes"]  # not grouped by class


def test_sizes_vary_like_imagenet(raw: tuple[Path, dict]) -> None:
    root, _ = raw
    sizes = {Image.open(io.BytesIO(d)).size for d in raw_images(root).values()}
    assert len(sizes) >= 4
    assert any(min(s) < 256 for s in sizes)
    assert any(max(s) / min(s) >= 6 for s in sizes)
    assert any(s[0] < s[1] for s in sizes) and any(s[0] > s[1] for s in sizes)


def hue_histogram(data: bytes) -> np.ndarray:
    """Hue histogram of the strongly coloured pixels: a feature no CNN needed."""
    img = Image.open(io.BytesIO(data)).convert("RGB").resize((64, 48))
    rgb = np.asarray(img, dtype=float) / 255
    vivid = rgb.max(axis=2) - rgb.min(axis=2) > 0.5
    hue = np.asarray(img.convert("HSV"))[..., 0][vivid]
    return np.histogram(hue, bins=12, range=(0, 256))[0] / max(1, vivid.sum())


def test_content_depends_on_class(tmp_path: Path) -> None:
    summary = make_sample(str(tmp_path), layout="folders", classes=4, train_per_class=6, val_per_class=1)
    colourless = {q["key"] for q in summary["quirks"] if q["kind"] in ("truncated", "grayscale")}
    feats, labels = [], []
    for label, wnid in enumerate(summary["wnids"]):
        for path in sorted((tmp_path / "train" / wnid).iterdir()):
            if path.stem not in colourless:
                feats.append(hue_histogram(path.read_bytes()))
                labels.append(label)
    x, y = np.array(feats), np.array(labels)
    # Leave-one-out nearest class mean: chance is 1/4.
    hits = 0
    for k in range(len(x)):
        rest = np.arange(len(x)) != k
        means = np.array([x[rest & (y == c)].mean(axis=0) for c in range(4)])
        hits += int(np.argmin(((means - x[k]) ** 2).sum(axis=1)) == y[k])
    assert hits / len(x) >= 0.75


def test_year_2010_names(tmp_path: Path) -> None:
    summary = make_sample(str(tmp_path), year=2010, classes=3, train_per_class=3, val_per_class=1)
    assert summary["year"] == 2010
    names = {p.name for p in tmp_path.iterdir()}
    assert names >= {
        "ILSVRC2010_images_train.tar",
        "ILSVRC2010_images_val.tar",
        "ILSVRC2010_devkit-1.0.tar.gz",
    }
    files = devkit_files(tmp_path, "ILSVRC2010_devkit-1.0.tar.gz")
    assert "devkit-1.0/data/ILSVRC2010_validation_ground_truth.txt" in files
    assert parse_meta(files["devkit-1.0/data/meta.mat"], "meta.mat")[0] == 2010
    with tarfile.open(tmp_path / "ILSVRC2010_images_val.tar") as tar:
        assert tar.getnames()[:2] == ["val", "val/ILSVRC2010_val_00000001.JPEG"]  # as published: in val/


SMALL_2010 = {"classes": 3, "train_per_class": 4, "val_per_class": 2, "test_per_class": 3, "year": 2010}


def is_banner(data: bytes) -> bool:
    """The blank 'not available' picture: no colour at all."""
    rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=int)
    return int((rgb.max(axis=2) - rgb.min(axis=2)).max()) < 16


def test_year_2010_as_published(tmp_path: Path) -> None:
    """Test tar and ground truth, patch_images.tar and gzip members: what the 2010 release holds."""
    import gzip

    summary = make_sample(str(tmp_path), **SMALL_2010)
    assert summary["test"] == 9
    assert {"ILSVRC2010_images_test.tar", "ILSVRC2010_test_ground_truth.txt", "patch_images.tar"} <= {
        p.name for p in tmp_path.iterdir()}
    with tarfile.open(tmp_path / "ILSVRC2010_images_test.tar") as tar:
        test = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    assert sorted(test) == [f"test/ILSVRC2010_test_{i:08d}.JPEG" for i in range(1, 10)]
    # One ILSVRC2010_ID a line, in test-file order, of a leaf class of meta.mat; not grouped by class.
    files = devkit_files(tmp_path, "ILSVRC2010_devkit-1.0.tar.gz")
    _, leaves = parse_meta(files["devkit-1.0/data/meta.mat"], "meta.mat")
    truth = [int(x) for x in (tmp_path / "ILSVRC2010_test_ground_truth.txt").read_text().split()]
    assert len(truth) == 9 and set(truth) == set(leaves) and truth != sorted(truth)

    kinds: dict[str, list[dict]] = {}
    for q in summary["quirks"]:
        kinds.setdefault(q["kind"], []).append(q)
    assert sorted(q["split"] for q in kinds["gzip"]) == ["train", "val"]
    assert sorted(q["split"] for q in kinds["patched"]) == ["test", "train"]
    raw = raw_images(tmp_path, "ILSVRC2010_images_train.tar", "ILSVRC2010_images_val.tar")
    images = {**raw, **{n.rsplit("/", 1)[1][:-5]: d for n, d in test.items()}}
    for q in kinds["gzip"]:
        data = images[q["key"]]
        assert data[:2] == b"\x1f\x8b" and gzip.decompress(data)[:2] == b"\xff\xd8"
    with tarfile.open(tmp_path / "patch_images.tar") as tar:
        patches = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    assert sorted(patches) == sorted(f"patch_images/{q['split']}/{q['key']}.JPEG" for q in kinds["patched"])
    for q in kinds["patched"]:
        assert q["path"] == f"patch_images.tar/patch_images/{q['split']}/{q['key']}.JPEG"
        assert is_banner(images[q["key"]]) and not is_banner(patches[q["path"].split("/", 1)[1]])
    other = {q["key"] for q in kinds["gzip"] + kinds["truncated"] + kinds["grayscale"]}  # or colourless
    banners = {k for k, d in images.items() if k not in other and is_banner(d)}
    assert banners == {q["key"] for q in kinds["patched"]}  # only the patched ones are blank
    again = tmp_path.parent / "again"
    assert make_sample(str(again), **SMALL_2010) == summary
    assert tree(str(again)) == tree(str(tmp_path))



def test_test_per_class_only_for_2010(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only for year 2010"):
        make_sample(str(tmp_path), test_per_class=2, **SMALL)
    assert not any(tmp_path.iterdir())


def test_existing_output_policy(tmp_path: Path) -> None:
    params = {"classes": 2, "train_per_class": 3, "val_per_class": 1, "layout": "folders"}
    out = tmp_path / "s"
    summary = make_sample(str(out), **params)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert make_sample(str(out), **params) == summary  # a finished sample is reused untouched
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    with pytest.raises(ValueError, match="other parameters"):
        make_sample(str(out), **{**params, "seed": 1})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        make_sample(str(tmp_path / "busy"), **params)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layout": "zip"}, "unknown layout"),
        ({"layout": "kaggle", "year": 2010}, "only as the raw layout"),
        ({"year": 2011}, "2012 or 2010"),
        ({"classes": 1}, "classes must be"),
        ({"seed": -1}, "seed must be"),
        ({"classes": 2, "train_per_class": 2}, "quirks"),
    ],
)
def test_bad_parameters(kwargs: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        make_sample(str(tmp_path), **kwargs)
    assert not any(tmp_path.iterdir())


# --- layout="fall": an ImageNet Fall release (a tar of per-synset tars, words.txt) ------------------

FALL = {"layout": "fall", "classes": 4, "train_per_class": 6}


def test_fall_shape_words_and_reproducible(tmp_path: Path) -> None:
    root = tmp_path / "fall"
    summary = make_sample(str(root), **FALL)
    assert sorted(p.name for p in root.iterdir()) == [".sample.json", "fall11_whole.tar", "words.txt"]
    with tarfile.open(root / "fall11_whole.tar") as outer:
        names = outer.getnames()
        inner = {m.name: tarfile.open(fileobj=io.BytesIO(outer.extractfile(m).read())).getnames()
                 for m in outer}
    assert names == [f"{w}.tar" for w in sorted(summary["wnids"])]  # nothing but per-synset tars
    for name, members in inner.items():
        wnid = name[: -len(".tar")]
        assert members and all(m.startswith(f"{wnid}_") and m.endswith(".JPEG") for m in members)
    sizes = {name[: -len(".tar")]: len(members) for name, members in inner.items()}
    assert sizes == summary["per_class"] and sum(sizes.values()) == summary["train"] and summary["val"] == 0
    n = FALL["train_per_class"]
    assert all(n - n // 2 <= k <= n for k in sizes.values()) and len(set(sizes.values())) > 1
    words = dict(line.split("\t") for line in (root / "words.txt").read_text().splitlines())
    assert set(summary["wnids"]) < set(words) and all(words.values())
    assert {q["kind"] for q in summary["quirks"]} == set(QUIRKS)
    assert tree(str(tmp_path / "fall")) == tree(make_sample_at(tmp_path / "again", **FALL))
    make_sample(str(tmp_path / "bare"), words=False, **FALL)
    assert not (tmp_path / "bare" / "words.txt").exists()
    assert (tmp_path / "bare" / "fall11_whole.tar").read_bytes() == (root / "fall11_whole.tar").read_bytes()


def make_sample_at(root: Path, **kwargs: object) -> str:
    make_sample(str(root), **kwargs)
    return str(root)


def test_fall_from_the_command_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tools.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["sample", "--out", str(tmp_path / "f"), "--layout", "fall",
                                  "--classes", "3", "--train-per-class", "4", "--no-words"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "f" / "fall11_whole.tar").exists() and not (tmp_path / "f" / "words.txt").exists()
    result = runner.invoke(main, ["sample", "--out", str(tmp_path / "r"), "--no-words"])
    assert result.exit_code == 1 and "--layout fall" in result.output and not (tmp_path / "r").exists()
