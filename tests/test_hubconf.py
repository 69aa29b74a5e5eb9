"""hubconf.py through torch.hub itself: `torch.hub.load(<this checkout>, "alexnet", source="local", ...)`
with weights from a path or a URL (file://, which torch.hub downloads as it would https://)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from trainer import checkpoint, weightfile
from trainer.model import AlexNet

REPO = str(Path(__file__).resolve().parent.parent)
CLASSES = 3
SWITCHES = dict(lrn_variant="cuda-convnet", norm="lrn", pool="nonoverlap", columns=2, dropout=0.5)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[AlexNet, Path, Path]:
    """A 3-class AlexNet with non-default switches, as .safetensors (with metadata) and as .pt."""
    folder = tmp_path_factory.mktemp("hub-weights")
    torch.manual_seed(1)
    model = AlexNet(num_classes=CLASSES, devices=("cpu",), init="kaiming", **SWITCHES).eval()
    meta = weightfile.metadata(CLASSES, SWITCHES)
    st = weightfile.save(folder / "best.safetensors", model.state_dict(), meta)
    pt = checkpoint.save_weights(folder / "best.pt", model.state_dict())
    return model, st, pt


@pytest.fixture
def hub_dir(tmp_path: Path) -> Iterator[Path]:
    """torch.hub's cache in a temp folder, for the URL downloads."""
    before = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(before)


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_safetensors_builds_the_network_its_metadata_names(saved: tuple[AlexNet, Path, Path]) -> None:
    model, st, _ = saved
    hub = torch.hub.load(REPO, "alexnet", source="local", weights=str(st), num_classes=CLASSES)
    assert isinstance(hub, AlexNet) and same(hub, model)
    assert hub.pool.kernel_size == model.pool.kernel_size == 2  # from the metadata, not passed
    assert hub.lrn.variant == "cuda-convnet"
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(hub.eval()(x), model(x))


def test_pt_takes_the_switches_as_arguments(saved: tuple[AlexNet, Path, Path]) -> None:
    model, _, pt = saved
    hub = torch.hub.load(REPO, "alexnet", source="local", weights=str(pt), num_classes=CLASSES, **SWITCHES)
    assert same(hub, model)
    with pytest.raises(RuntimeError, match="size mismatch"):  # 1000 classes by default
        torch.hub.load(REPO, "alexnet", source="local", weights=str(pt), **SWITCHES)


@pytest.mark.parametrize("kind", ["safetensors", "pt"])
def test_url_is_downloaded_into_the_hub_cache(saved: tuple[AlexNet, Path, Path], hub_dir: Path,
                                              kind: str) -> None:
    model, st, pt = saved
    path = st if kind == "safetensors" else pt
    hub = torch.hub.load(REPO, "alexnet", source="local", weights=path.as_uri(), num_classes=CLASSES,
                         **({} if kind == "safetensors" else SWITCHES))
    assert same(hub, model)
    assert (hub_dir / "checkpoints" / path.name).read_bytes() == path.read_bytes()


def test_arguments_that_contradict_the_metadata_are_refused(saved: tuple[AlexNet, Path, Path]) -> None:
    _, st, _ = saved
    with pytest.raises(ValueError, match=f"num_classes={CLASSES}, not 1000: pass num_classes={CLASSES}"):
        torch.hub.load(REPO, "alexnet", source="local", weights=str(st))
    with pytest.raises(ValueError, match="pool='nonoverlap', not 'overlap'"):
        torch.hub.load(REPO, "alexnet", source="local", weights=str(st), num_classes=CLASSES, pool="overlap")


def test_without_weights_the_switches_build_the_network() -> None:
    hub = torch.hub.load(REPO, "alexnet", source="local", num_classes=7, norm="batch", columns=1)
    assert hub.fc8.out_features == 7 and hub.columns == 1 and len(hub.bn1) == 1
