"""Layout detection and enumeration on small generated copies of each ILSVRC layout."""

from __future__ import annotations

import io
import pickle
import shutil
import tarfile
from pathlib import Path

import fsspec
import pytest
import scipy.io

from tools.holdout import HoldoutRule, apply
from tools.layouts import Layout, LayoutError, SourceRef, detect, read_bytes
from tools.sample import make_sample

SMALL = {"classes": 3, "train_per_class": 4, "val_per_class": 2}
N_TRAIN = SMALL["classes"] * SMALL["train_per_class"]
N_VAL = SMALL["classes"] * SMALL["val_per_class"]
DEVKIT_2012 = "ILSVRC2012_devkit_t12.tar.gz"


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """One pristine copy per layout (same seed, so the same images); tests copy before editing."""
    base = tmp_path_factory.mktemp("layouts")
    made = {}
    for name, kwargs in {
        "raw-2012": {},
        "raw-2010": {"year": 2010},
        "folders": {"layout": "folders"},
        "kaggle": {"layout": "kaggle"},
    }.items():
        made[name] = (base / name, make_sample(str(base / name), **SMALL, **kwargs))
    return made


def copy(samples: dict, name: str, tmp_path: Path) -> tuple[Path, dict]:
    src, summary = samples[name]
    shutil.copytree(src, tmp_path / name)
    return tmp_path / name, summary


def devkit_truth(devkit: Path, year: int) -> dict[str, str]:
    """val key -> wnid, read straight from the devkit (independently of tools.layouts)."""
    with tarfile.open(devkit) as tar:
        files = {m.name.rsplit("/", 1)[-1]: tar.extractfile(m).read() for m in tar if m.isfile()}
    synsets = scipy.io.loadmat(io.BytesIO(files["meta.mat"]), squeeze_me=True)["synsets"]
    id_to_wnid = {int(s[f"ILSVRC{year}_ID"]): str(s["WNID"]) for s in synsets}
    lines = files[f"ILSVRC{year}_validation_ground_truth.txt"].split()
    return {f"ILSVRC{year}_val_{i:08d}": id_to_wnid[int(x)] for i, x in enumerate(lines, 1)}


def labels(refs: list[SourceRef]) -> dict[str, str]:
    return {r.key: r.wnid for r in refs}


def check_common(layout: Layout, summary: dict) -> tuple[list[SourceRef], list[SourceRef]]:
    """What holds for every layout: sorted-wnid classes, counts, sorted keys, train labels."""
    assert layout.splits() == (["train", "val", "test"] if "test" in summary else ["train", "val"])
    wnids = sorted(summary["wnids"])
    assert [(c.index, c.wnid) for c in layout.classes()] == list(enumerate(wnids))
    train, val = layout.samples("train"), layout.samples("val")
    assert (len(train), len(val)) == (N_TRAIN, N_VAL)
    for refs in (train, val):
        assert [r.key for r in refs] == sorted({r.key for r in refs})
    assert all(r.key.startswith(r.wnid + "_") for r in train)  # train names carry their class
    by_key = {r.key: r for r in train + val}
    for q in summary["quirks"]:
        if q["split"] != "test":
            assert by_key[q["key"]].path == q["path"] and by_key[q["key"]].wnid == q["wnid"]
    assert layout.samples("train") == train  # deterministic
    return train, val


def extract(root: Path, ref: SourceRef) -> bytes:
    """The bytes of `ref` the ordinary way: extracting with tarfile, or reading the loose file."""
    parts = ref.path.split("/")
    if not parts[0].endswith(".tar"):
        return (root / ref.path).read_bytes()
    nested = parts[1].endswith(".tar")  # a per-class tar; otherwise a member under folders (val/...)
    with tarfile.open(root / parts[0]) as outer:
        data = outer.extractfile(parts[1] if nested else "/".join(parts[1:])).read()
    if nested:
        with tarfile.open(fileobj=io.BytesIO(data)) as inner:
            data = inner.extractfile(parts[2]).read()
    return data


@pytest.mark.parametrize("year", [2012, 2010])
def test_raw(samples: dict, year: int) -> None:
    root, summary = samples[f"raw-{year}"]
    layout = detect(str(root))
    assert layout.name == f"raw-{year}"
    assert all(c.words for c in layout.classes())
    train, val = check_common(layout, summary)
    assert labels(val) == devkit_truth(root / next(root.glob("*devkit*")), year)
    for ref in train + val:
        assert ref.url.endswith(".tar") and ref.size > 0
        assert read_bytes(ref) == extract(root, ref)
    train_tar = "ILSVRC2010_images_train.tar" if year == 2010 else "ILSVRC2012_img_train.tar"
    assert train[0].path.startswith(f"{train_tar}/{train[0].wnid}.tar/")


def test_raw_scan_reads_headers_only(samples: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = samples["raw-2012"]
    layout = detect(str(root))
    read = [0]

    class Counting:
        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def read(self, n=-1):
            data = self.f.read(n)
            read[0] += len(data)
            return data

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    real_open = layout.fs.open
    monkeypatch.setattr(layout.fs, "open", lambda *a, **k: Counting(real_open(*a, **k)))
    layout.samples("train")
    size = (root / "ILSVRC2012_img_train.tar").stat().st_size
    assert 0 < read[0] < size / 20


def test_labels_agree_across_layouts(samples: dict) -> None:
    """Same seed, same images: every layout must give every val image the same class and bytes."""
    raw = {r.key: r for r in detect(str(samples["raw-2012"][0])).samples("val")}
    for name in ("folders", "kaggle"):
        other = detect(str(samples[name][0])).samples("val")
        assert labels(other) == {k: r.wnid for k, r in raw.items()}
        assert all(read_bytes(r) == read_bytes(raw[r.key]) for r in other)


def test_folders_with_class_val(samples: dict, tmp_path: Path) -> None:
    root, summary = copy(samples, "folders", tmp_path)
    for junk in (
        "train/.DS_Store",
        "train/README",
        "val/.DS_Store",
        f"train/{summary['wnids'][0]}/._x.JPEG",
        f"train/{summary['wnids'][0]}/Thumbs.db",
    ):
        (root / junk).write_bytes(b"junk")
    layout = detect(f"file://{root}")
    assert layout.name == "folders"
    assert all(c.words for c in layout.classes())  # from the devkit beside
    train, val = check_common(layout, summary)
    assert labels(val) == devkit_truth(root / DEVKIT_2012, 2012)
    for ref in train + val:
        assert (ref.offset, ref.size) == (0, -1) and read_bytes(ref) == (root / ref.path).read_bytes()
    assert pickle.loads(pickle.dumps(train[0])) == train[0]


def flatten_val(root: Path) -> None:
    for image in list((root / "val").glob("*/*")):
        image.rename(root / "val" / image.name)
    for folder in (root / "val").iterdir():
        if folder.is_dir():
            folder.rmdir()


@pytest.mark.parametrize("devkit", ["tar.gz", "folder"])
def test_folders_flat_val_labelled_by_devkit(samples: dict, tmp_path: Path, devkit: str) -> None:
    root, summary = copy(samples, "folders", tmp_path)
    truth = devkit_truth(root / DEVKIT_2012, 2012)
    flatten_val(root)
    if devkit == "folder":
        with tarfile.open(root / DEVKIT_2012) as tar:
            tar.extractall(root, filter="data")
        (root / DEVKIT_2012).unlink()
    layout = detect(str(root))
    _, val = check_common(layout, summary)
    assert labels(val) == truth
    assert val[0].path == "val/ILSVRC2012_val_00000001.JPEG"


def test_folders_without_devkit(samples: dict, tmp_path: Path) -> None:
    root, summary = copy(samples, "folders", tmp_path)
    (root / DEVKIT_2012).unlink()
    layout = detect(str(root))
    assert [c.words for c in layout.classes()] == [""] * SMALL["classes"]
    _, val = check_common(layout, summary)
    flatten_val(root)
    with pytest.raises(LayoutError, match="flat.*devkit"):
        detect(str(root)).samples("val")


def test_kaggle_in_memory(samples: dict) -> None:
    src, summary = samples["kaggle"]
    fs = fsspec.filesystem("memory")
    for path in src.rglob("*"):
        if path.is_file():
            fs.pipe_file(f"/kaggle-copy/{path.relative_to(src)}", path.read_bytes())
    layout = detect("memory://kaggle-copy")
    assert layout.name == "kaggle"
    assert all(c.words for c in layout.classes())
    train, val = check_common(layout, summary)
    rows = (src / "LOC_val_solution.csv").read_text().splitlines()[1:]
    assert labels(val) == {r.split(",")[0]: r.split(",")[1].split()[0] for r in rows}
    assert val[0].url.startswith("memory://")
    assert read_bytes(val[0]) == (src / val[0].path).read_bytes()


def test_missing_split_is_left_out(samples: dict, tmp_path: Path) -> None:
    root, _ = copy(samples, "raw-2012", tmp_path)
    (root / "ILSVRC2012_img_val.tar").unlink()
    layout = detect(str(root))
    assert layout.splits() == ["train"]
    with pytest.raises(LayoutError, match="no val split"):
        layout.samples("val")


@pytest.mark.parametrize("src", ["empty", "missing", "memory://nothing-here"])
def test_unknown_source_lists_what_was_looked_for(tmp_path: Path, src: str) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README").write_text("not a dataset")
    url = src if "://" in src else str(tmp_path / src)
    with pytest.raises(LayoutError) as e:
        detect(url)
    message = str(e.value)
    assert url in message and "\n" not in message
    for looked_for in ("raw-2012", "ILSVRC2012_img_train.tar", "raw-2010", "kaggle", "folders"):
        assert looked_for in message


def rewrite_devkit(path: Path, change: dict[str, bytes | None]) -> None:
    """Replace (bytes) or drop (None) members of the devkit tar.gz, matched by name suffix."""
    with tarfile.open(path) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    for suffix, data in change.items():
        name = next(n for n in files if n.endswith(suffix))
        if data is None:
            del files[name]
        else:
            files[name] = data
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"meta.mat": None}, r"ILSVRC2012_devkit_t12\.tar\.gz: expected one data/meta\.mat"),
        ({"meta.mat": b"not matlab"}, "meta.mat: not a readable MATLAB file"),
        ({"ground_truth.txt": None}, "expected one data/ILSVRC2012_validation_ground_truth.txt"),
        ({"ground_truth.txt": b"1\n2\n"}, "ILSVRC2012_validation_ground_truth.txt: 2 labels but"),
        ({"ground_truth.txt": b"1\n2\n3\n99\n1\n2\n"}, "truth.txt: line 4 is '99', not the ILSVRC2012_ID"),
    ],
)
def test_bad_devkit(samples: dict, tmp_path: Path, change: dict, message: str) -> None:
    root, _ = copy(samples, "raw-2012", tmp_path)
    rewrite_devkit(root / DEVKIT_2012, change)
    with pytest.raises(LayoutError, match=message):
        detect(str(root)).samples("val")


def test_unreadable_or_missing_devkit(samples: dict, tmp_path: Path) -> None:
    root, _ = copy(samples, "raw-2012", tmp_path)
    (root / DEVKIT_2012).write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(LayoutError, match=r"ILSVRC2012_devkit_t12\.tar\.gz: not a readable tar\.gz"):
        detect(str(root))
    (root / DEVKIT_2012).unlink()
    with pytest.raises(LayoutError, match="not ILSVRC2012_devkit_t12.tar.gz"):
        detect(str(root))


def test_train_class_unknown_to_devkit(samples: dict, tmp_path: Path) -> None:
    root, summary = copy(samples, "folders", tmp_path)
    (root / "train" / "n09999999").mkdir()
    (root / "train" / "n09999999" / "n09999999_1.JPEG").write_bytes(b"x")
    with pytest.raises(LayoutError, match="train/n09999999 is not one of the 3 known classes"):
        detect(str(root)).samples("train")
    shutil.rmtree(root / "train" / "n09999999")
    (root / "train" / "misc").mkdir()
    with pytest.raises(LayoutError, match="train/misc is not named by a WordNet id"):
        detect(str(root)).samples("train")
    shutil.rmtree(root / "train" / "misc")
    shutil.rmtree(root / "train" / summary["wnids"][1])
    with pytest.raises(LayoutError, match="1 of 3 classes have no train images"):
        detect(str(root)).samples("train")


def test_raw_train_class_unknown_to_devkit(samples: dict, tmp_path: Path) -> None:
    root, _ = copy(samples, "raw-2012", tmp_path)
    with tarfile.open(root / "ILSVRC2012_img_train.tar", "a") as tar:
        info = tarfile.TarInfo("n09999999.tar")
        info.size = 10240
        tar.addfile(info, io.BytesIO(bytes(10240)))
    with pytest.raises(LayoutError, match="ILSVRC2012_img_train.tar/n09999999.tar: n09999999 is not one of"):
        detect(str(root)).samples("train")


def test_val_file_without_label(samples: dict, tmp_path: Path) -> None:
    root, _ = copy(samples, "folders", tmp_path)
    flatten_val(root)
    (root / "val" / "ILSVRC2012_val_00000002.JPEG").rename(root / "val" / "ILSVRC2012_val_00000099.JPEG")
    with pytest.raises(LayoutError, match="val/ILSVRC2012_val_00000099.JPEG: no ground-truth label"):
        detect(str(root)).samples("val")
    (root / "val" / "extra.JPEG").write_bytes(b"x")
    with pytest.raises(LayoutError, match=f"truth.txt: {N_VAL} labels but val holds {N_VAL + 1} images"):
        detect(str(root)).samples("val")


def test_kaggle_val_without_label(samples: dict, tmp_path: Path) -> None:
    root, _ = copy(samples, "kaggle", tmp_path)
    csv = root / "LOC_val_solution.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(LayoutError, match=f"LOC_val_solution.csv: {N_VAL - 1} labels but"):
        detect(str(root)).samples("val")
    csv.write_text("id,label\n")
    with pytest.raises(LayoutError, match="header"):
        detect(str(root)).samples("val")
    (root / "LOC_synset_mapping.txt").unlink()
    with pytest.raises(LayoutError, match="not LOC_synset_mapping.txt"):
        detect(str(root))


def test_read_bytes_reports_a_changed_file(samples: dict, tmp_path: Path) -> None:
    root, _ = copy(samples, "raw-2012", tmp_path)
    ref = detect(str(root)).samples("train")[-1]
    with open(root / "ILSVRC2012_img_train.tar", "r+b") as f:
        f.truncate(ref.offset + 10)
    with pytest.raises(LayoutError, match=f"{ref.path}: got 10 of {ref.size} bytes"):
        read_bytes(ref)


# --- ILSVRC-2010 as published: the test split, patch_images.tar, members under folders ---------

TEST_TRUTH = "ILSVRC2010_test_ground_truth.txt"


def meta_ids(root: Path) -> dict[int, str]:
    """ILSVRC2010_ID -> wnid, read straight from the devkit's meta.mat."""
    with tarfile.open(root / "ILSVRC2010_devkit-1.0.tar.gz") as tar:
        meta = next(tar.extractfile(m).read() for m in tar if m.name.endswith("meta.mat"))
    synsets = scipy.io.loadmat(io.BytesIO(meta), squeeze_me=True)["synsets"]
    return {int(s["ILSVRC2010_ID"]): str(s["WNID"]) for s in synsets}


def test_raw_2010_test_split_labelled_by_its_ground_truth(samples: dict) -> None:
    root, summary = samples["raw-2010"]
    layout = detect(str(root))
    test = layout.samples("test")
    ids = meta_ids(root)
    lines = (root / TEST_TRUTH).read_text().split()
    assert labels(test) == {f"ILSVRC2010_test_{i:08d}": ids[int(x)] for i, x in enumerate(lines, 1)}
    assert len(test) == summary["test"] == SMALL["classes"] * SMALL["val_per_class"]
    for ref in test:
        assert read_bytes(ref) == extract(root, ref)


def test_raw_2010_patches_replace_their_originals(samples: dict) -> None:
    root, summary = samples["raw-2010"]
    layout = detect(str(root))
    refs = {r.key: r for split in ("train", "val", "test") for r in layout.samples(split)}
    patched = [q for q in summary["quirks"] if q["kind"] == "patched"]
    assert sorted(q["split"] for q in patched) == ["test", "train"]
    with tarfile.open(root / "patch_images.tar") as tar:
        patches = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
    for q in patched:
        ref = refs[q["key"]]
        member = f"patch_images/{q['split']}/{q['key']}.JPEG"
        assert ref.path == f"patch_images.tar/{member}" and ref.replaces == q["replaces"]
        assert read_bytes(ref) == patches[member]
        assert ref.wnid == q["wnid"]  # the original's label
    assert sum(bool(r.replaces) for r in refs.values()) == len(patches) == 2


@pytest.mark.parametrize("where", ["devkit-folder", "devkit-tar"])
def test_raw_2010_test_truth_inside_the_devkit(samples: dict, tmp_path: Path, where: str) -> None:
    root, _ = copy(samples, "raw-2010", tmp_path)
    expected = labels(detect(str(root)).samples("test"))
    truth = (root / TEST_TRUTH).read_bytes()
    (root / TEST_TRUTH).unlink()
    if where == "devkit-folder":
        (root / "devkit-1.0" / "data").mkdir(parents=True)
        (root / "devkit-1.0" / "data" / TEST_TRUTH).write_bytes(truth)
    else:
        devkit = root / "ILSVRC2010_devkit-1.0.tar.gz"
        with tarfile.open(devkit) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        files[f"devkit-1.0/data/{TEST_TRUTH}"] = truth
        with tarfile.open(devkit, "w:gz") as tar:
            for name, data in files.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    assert labels(detect(str(root)).samples("test")) == expected


def test_raw_2010_test_without_labels_is_refused(samples: dict, tmp_path: Path) -> None:
    root, _ = copy(samples, "raw-2010", tmp_path)
    (root / TEST_TRUTH).unlink()
    layout = detect(str(root))
    assert "test" in layout.splits() and layout.unlabelled("test") is not None
    with pytest.raises(LayoutError) as e:
        layout.samples("test")
    message = str(e.value)
    assert "\n" not in message and "ILSVRC2010_images_test.tar has no labels" in message
    assert TEST_TRUTH in message and "devkit-1.0/data/" in message
    assert layout.unlabelled("train") is None and layout.samples("val")


def test_raw_2010_two_test_truths_that_differ(samples: dict, tmp_path: Path) -> None:
    root, _ = copy(samples, "raw-2010", tmp_path)
    (root / "devkit-1.0" / "data").mkdir(parents=True)
    shutil.copy(root / TEST_TRUTH, root / "devkit-1.0" / "data" / TEST_TRUTH)
    assert detect(str(root)).samples("test")  # identical copies are one truth
    lines = (root / TEST_TRUTH).read_text().split()
    (root / "devkit-1.0" / "data" / TEST_TRUTH).write_text("\n".join(lines[::-1]) + "\n")
    with pytest.raises(LayoutError, match="test ground truths .* differ"):
        detect(str(root)).samples("test")


def add_patch(root: Path, member: str, data: bytes) -> None:
    with tarfile.open(root / "patch_images.tar") as tar:
        files = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]
    with tarfile.open(root / "patch_images.tar", "w") as tar:
        for name, body in files + [(member, data)]:
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_raw_2010_patch_without_its_original_is_an_error(samples: dict, tmp_path: Path, split: str) -> None:
    root, _ = copy(samples, "raw-2010", tmp_path)
    name = {"train": "n01000000_1", "val": "ILSVRC2010_val_00099999",
            "test": "ILSVRC2010_test_00099999"}[split]
    add_patch(root, f"patch_images/{split}/{name}.JPEG", b"\xff\xd8 a patch")
    with pytest.raises(LayoutError) as e:
        detect(str(root)).samples(split)
    message = str(e.value)
    member = f"patch_images/{split}/{name}.JPEG"
    assert message.startswith(f"patch_images.tar/{member}: its original {name} is not")
    assert "\n" not in message


def test_raw_2010_patch_outside_a_split_folder(samples: dict, tmp_path: Path) -> None:
    root, _ = copy(samples, "raw-2010", tmp_path)
    add_patch(root, "patch_images/extra/x.JPEG", b"\xff\xd8")
    with pytest.raises(LayoutError, match=r"patch_images/extra/x\.JPEG: not under patch_images/<train"):
        detect(str(root)).samples("train")


def test_raw_2010_val_and_test_members_sit_under_a_folder(samples: dict) -> None:
    root, _ = samples["raw-2010"]
    layout = detect(str(root))
    plain = [r for split in ("val", "test") for r in layout.samples(split) if not r.replaces]
    assert plain and all(r.path.split("/")[1] in ("val", "test") for r in plain)


# --- ImageNet Fall releases: a tar of per-synset tars, words.txt, no devkit, no val -----------------

FALL = {"classes": 4, "train_per_class": 6}


@pytest.fixture(scope="module")
def fall(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("fall") / "fall11"
    return root, make_sample(str(root), layout="fall", **FALL)


def fall_copy(fall: tuple[Path, dict], tmp_path: Path) -> tuple[Path, dict]:
    src, summary = fall
    shutil.copytree(src, tmp_path / "fall11")
    return tmp_path / "fall11", summary


def fall_images(tar_path: Path) -> dict[str, tuple[str, bytes]]:
    """key -> (wnid, bytes) of every image, extracted the ordinary way (independently of layouts)."""
    images = {}
    with tarfile.open(tar_path) as outer:
        for m in outer:
            with tarfile.open(fileobj=outer.extractfile(m)) as inner:
                for n in inner:
                    images[n.name.rsplit(".", 1)[0]] = (m.name[: -len(".tar")], inner.extractfile(n).read())
    return images


def rewrite_fall(tar_path: Path, members: list[tuple[str, bytes]]) -> None:
    """Rebuild the outer tar with `members` (name, bytes) in the given order."""
    with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def fall_members(tar_path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(tar_path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


def test_fall_every_image_once_sorted_wnid_labels_words_from_words_txt(fall: tuple[Path, dict]) -> None:
    root, summary = fall
    layout = detect(str(root))
    assert layout.name == "fall" and layout.splits() == ["train"]
    words = dict(line.split("\t") for line in (root / "words.txt").read_text().splitlines())
    assert len(words) > FALL["classes"]  # it names synsets the tar lacks; they are not classes
    wnids = sorted(summary["wnids"])
    expected = [(i, w, words[w]) for i, w in enumerate(wnids)]
    assert [(c.index, c.wnid, c.words) for c in layout.classes()] == expected
    truth = fall_images(root / "fall11_whole.tar")
    refs = layout.samples("train")
    assert [r.key for r in refs] == sorted(truth)  # every image once, sorted by key
    for r in refs:
        assert (r.wnid, read_bytes(r)) == truth[r.key]
        assert r.path == f"fall11_whole.tar/{r.wnid}.tar/{r.key}.JPEG"
    counts = {w: sum(r.wnid == w for r in refs) for w in wnids}
    assert counts == summary["per_class"] and len(set(counts.values())) > 1  # unequal class sizes
    with pytest.raises(LayoutError, match="no val split"):
        layout.samples("val")


def test_fall_without_words_txt_names_classes_by_wnid(fall: tuple[Path, dict], tmp_path: Path) -> None:
    root, summary = fall_copy(fall, tmp_path)
    (root / "words.txt").unlink()
    assert [c.words for c in detect(str(root)).classes()] == sorted(summary["wnids"])


def test_fall_release_of_another_name_is_recognised_by_its_shape(fall: tuple[Path, dict],
                                                                 tmp_path: Path) -> None:
    root, summary = fall_copy(fall, tmp_path)
    (root / "fall11_whole.tar").rename(root / "winter21_whole.tar")
    rewrite_fall(root / "notes.tar", [("README", b"not a release")])  # a tar of another shape beside it
    layout = detect(str(root))
    assert layout.name == "fall"
    refs = layout.samples("train")
    assert len(refs) == summary["train"] and refs[0].path.startswith("winter21_whole.tar/")
    shutil.copy(root / "winter21_whole.tar", root / "fall09_whole.tar")
    with pytest.raises(LayoutError, match="several tars of per-synset tars.*keep one"):
        detect(str(root))


def test_fall_gzip_compressed_release_is_refused_in_one_line(fall: tuple[Path, dict], tmp_path: Path) -> None:
    import gzip

    root, _ = fall_copy(fall, tmp_path)
    tar = root / "fall11_whole.tar"
    (root / "winter21_whole.tar.gz").write_bytes(gzip.compress(tar.read_bytes()))
    tar.unlink()
    with pytest.raises(LayoutError, match=r"winter21_whole\.tar\.gz: .*cannot be read in place") as e:
        detect(str(root))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("text,line", [
    ("n00000001\tentity\nn00000002 no tab\n", 2),
    ("n00000001\tentity\n\nx0000002\tbad wnid\n", 3),
    ("n00000001\tentity\nn00000001\tagain\n", 2),
    ("n00000001\t\n", 1),
])
def test_fall_malformed_words_txt(fall: tuple[Path, dict], tmp_path: Path, text: str, line: int) -> None:
    root, _ = fall_copy(fall, tmp_path)
    (root / "words.txt").write_text(text)
    with pytest.raises(LayoutError, match=rf"words\.txt: line {line} is .*not 'nXXXXXXXX<TAB>words'|"
                                          rf"words\.txt: line {line} lists n00000001 a second time") as e:
        detect(str(root))
    assert str(e.value).startswith(f"{root}/words.txt: ") and "\n" not in str(e.value)


@pytest.mark.parametrize("name,data,message", [
    ("README.txt", b"hello", r"fall11_whole\.tar/README\.txt: not a per-synset tar"),
    ("n09999999.tar", b"\x00garbage" * 100, r"fall11_whole\.tar/n09999999\.tar: not a readable tar"),
    ("n09999999.tar", b"\x00" * 10240, r"fall11_whole\.tar/n09999999\.tar: holds no images"),
])
def test_fall_bad_member(fall: tuple[Path, dict], tmp_path: Path, name: str, data: bytes,
                         message: str) -> None:
    root, _ = fall_copy(fall, tmp_path)
    tar = root / "fall11_whole.tar"
    rewrite_fall(tar, fall_members(tar) + [(name, data)])
    with pytest.raises(LayoutError, match=message) as e:
        detect(str(root)).samples("train")
    assert "\n" not in str(e.value)


def test_fall_member_order_does_not_matter(fall: tuple[Path, dict], tmp_path: Path) -> None:
    root, _ = fall_copy(fall, tmp_path)
    before = [(r.key, r.wnid, read_bytes(r)) for r in detect(str(root)).samples("train")]
    tar = root / "fall11_whole.tar"
    rewrite_fall(tar, fall_members(tar)[::-1])
    after = detect(str(root)).samples("train")
    assert [(r.key, r.wnid, read_bytes(r)) for r in after] == before


def test_fall_extracted_to_train_folders_with_words_txt(fall: tuple[Path, dict], tmp_path: Path) -> None:
    root, summary = fall
    copy_root = tmp_path / "fall11-folders"
    for key, (wnid, data) in fall_images(root / "fall11_whole.tar").items():
        (copy_root / "train" / wnid).mkdir(parents=True, exist_ok=True)
        (copy_root / "train" / wnid / f"{key}.JPEG").write_bytes(data)
    shutil.copy(root / "words.txt", copy_root / "words.txt")
    layout, tar_layout = detect(str(copy_root)), detect(str(root))
    assert layout.name == "folders" and layout.splits() == ["train"]
    assert layout.classes() == tar_layout.classes()
    assert labels(layout.samples("train")) == labels(tar_layout.samples("train"))
    # the held-out split depends on (seed, wnid, image name) only, not on how the release is stored
    rule = HoldoutRule(fraction=0.5, seed=3)
    assert labels(apply(layout, rule).samples("val")) == labels(apply(tar_layout, rule).samples("val"))
    (copy_root / "words.txt").write_text("n00000001 no tab\n")
    with pytest.raises(LayoutError, match=rf"^{copy_root}/words\.txt: line 1 "):
        detect(str(copy_root))
