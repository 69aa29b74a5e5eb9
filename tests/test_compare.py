"""alexnet-report --compare: the table of several runs against the first, with the paper's claims."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from tests import fakes
from trainer.cli import report_main
from trainer.config import TrainConfig


def fake_run(run: Path, top1: float, top5: float, ten: tuple[float, float] | None = (0.3, 0.1),
             switches: dict | None = None, speed: float = 100.0, **config: object) -> None:
    """A run folder shaped as alexnet-train writes it (params.json, metrics.jsonl); `switches` are
    the ablation options, absent (as in runs made before they existed) when None."""
    run.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(shards="s", out=str(run), **config).to_dict()
    cfg.update(switches or {})
    fakes.write_params(run, cfg)
    records = []
    for epoch, (e1, e5) in enumerate([(0.9, 0.5), (0.5 * (0.9 + top1), 0.5 * (0.5 + top5)), (top1, top5)]):
        records.append({"kind": "train", "epoch": epoch, "step": 4 * epoch + 2, "loss": 1.0, "lr": 0.01,
                        "images_per_s": speed, "data_wait": 0.1})
        records.append({"kind": "epoch", "epoch": epoch, "step": 4 * (epoch + 1), "train_loss": 1.0,
                        "val_loss": 1.1, "val_top1_err": e1, "val_top5_err": e5, "val_samples": 16,
                        "lr": 0.01, "images_per_s": speed + epoch, "data_wait": 0.2, "epoch_s": 3.0})
    if ten:
        records.append({"kind": "final", "epoch": 2, "step": 12, "ten_crop_loss": 1.0,
                        "ten_crop_top1_err": ten[0], "ten_crop_top5_err": ten[1], "ten_crop_samples": 16})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def rows_of(md: str) -> dict[str, list[str]]:
    """The first table's rows by run name, as cell lists."""
    out = {}
    for line in md.split("## The paper's claims")[0].splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0].strip("`")] = cells
    return out


def test_compare_sets_measured_differences_beside_the_papers(tmp_path: Path) -> None:
    base, lrn, pool, drop = (tmp_path / n for n in ("baseline", "no-lrn", "nonoverlap-pool", "no-dropout"))
    fake_run(base, 0.40, 0.20, ten=(0.38, 0.18), speed=100.0)  # an old run: no switch keys at all
    fake_run(lrn, 0.43, 0.22, ten=(0.40, 0.19), switches={"norm": "none"}, speed=120.0)
    fake_run(pool, 0.41, 0.21, ten=None, switches={"pool": "nonoverlap"})
    fake_run(drop, 0.45, 0.25, ten=(0.44, 0.20), switches={"dropout": 0.0}, epochs=3)
    out = tmp_path / "cmp"
    result = CliRunner().invoke(report_main, ["--compare", str(base), str(lrn), str(pool), str(drop),
                                              "--out", str(out)])
    assert result.exit_code == 0, result.output
    md = (out / "compare.md").read_text()
    rows = rows_of(md)
    assert list(rows) == ["baseline", "no-lrn", "nonoverlap-pool", "no-dropout"]
    # run | options | epochs | top-1 | top-5 | 10c top-1 | 10c top-5 | best | img/s | gap | Δ1 | Δ5 | paper
    assert rows["baseline"][1:] == ["none", "3", "40.00%", "20.00%", "38.00%", "18.00%", "3", "101",
                                    "0.100", "–", "–", "baseline"]
    # 10-crop in both: 40 - 38 = +2 points top-1, 19 - 18 = +1 top-5, the paper's +1.4/+1.2 beside it
    assert rows["no-lrn"][1] == "`--norm none`"
    assert rows["no-lrn"][8:] == ["121", "0.100", "+2.00", "+1.00", "§3.3: +1.4 / +1.2"]
    # no 10-crop in this run: the centre crops are compared, and a note says so
    assert rows["nonoverlap-pool"][5:7] == ["–", "–"]
    assert rows["nonoverlap-pool"][10:] == ["+1.00", "+1.00", "§3.4: +0.4 / +0.3"]
    assert "`nonoverlap-pool`: difference taken on the centre crop" in md
    # another setting differs too: the claim is shown with that warning; no figure for dropout
    assert rows["no-dropout"][1] == "`--epochs 3` `--dropout 0.0`"
    assert rows["no-dropout"][12].startswith('§4.2: "Without dropout')
    assert "(but epochs differ too)" in rows["no-dropout"][12]
    assert "| `--lighting` | `off` | §4.1 | +1.00 | – |" in md
    assert (out / "compare.png").read_bytes().startswith(b"\x89PNG")


def test_no_claim_when_two_switches_change_or_for_values_the_paper_did_not_test(tmp_path: Path) -> None:
    fake_run(tmp_path / "a", 0.4, 0.2, ten=(0.38, 0.18))
    fake_run(tmp_path / "two", 0.5, 0.3, switches={"norm": "none", "pool": "nonoverlap"})
    fake_run(tmp_path / "bn", 0.3, 0.1, switches={"norm": "batch"})
    fake_run(tmp_path / "seed", 0.3, 0.1, seed=1)
    runs = [str(tmp_path / n) for n in ("a", "two", "bn", "seed")]
    result = CliRunner().invoke(report_main, ["--compare", *runs, "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = rows_of((tmp_path / "compare.md").read_text())
    assert rows["two"][1] == "`--norm none` `--pool nonoverlap`" and rows["two"][12] == ""
    assert rows["bn"][12] == "" and rows["bn"][10] == "-8.00"
    assert rows["seed"][1] == "`--seed 1`" and rows["seed"][12] == ""  # seed noise: no claim


def test_compare_bad_input_is_one_line(tmp_path: Path) -> None:
    fake_run(tmp_path / "a", 0.4, 0.2)
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(report_main, ["--compare", str(tmp_path / "a"), str(tmp_path / "empty"),
                                              "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: {tmp_path / 'empty'}: "
                                     "no params.json (not an alexnet-train run folder)")
    assert not (tmp_path / "o" / "compare.md").exists()


def test_report_of_one_run_is_unchanged(tmp_path: Path) -> None:
    fake_run(tmp_path / "a", 0.4, 0.2)
    result = CliRunner().invoke(report_main, [str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    summary = (tmp_path / "a" / "summary.md").read_text()
    # The one-run summary of the fake run's own numbers, and no comparison written anywhere.
    assert summary.startswith("# a\n")
    assert "| final (epoch 3) | 40.00% | 20.00% |" in summary
    assert "| best | 40.00% (epoch 3) | 20.00% (epoch 3) |" in summary
    assert "| 10-crop, final (§6) | 30.00% | 10.00% |" in summary
    assert "compare" not in result.output and not list(tmp_path.rglob("compare.md"))
    twice = CliRunner().invoke(report_main, [str(tmp_path / "a"), str(tmp_path / "a")])
    assert twice.exit_code == 2 and not list(tmp_path.rglob("compare.md"))


def test_compare_garbled_metrics_is_one_line(tmp_path: Path) -> None:
    fake_run(tmp_path / "a", 0.4, 0.2)
    fake_run(tmp_path / "b", 0.4, 0.2)
    log = tmp_path / "b" / "metrics.jsonl"
    log.write_text(log.read_text().replace('"val_top1_err"', '"x"'))
    result = CliRunner().invoke(report_main, ["--compare", str(tmp_path / "a"), str(tmp_path / "b"),
                                              "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {tmp_path / 'b'}: params.json or metrics.jsonl lacks or garbles")
    assert len(result.output.strip().splitlines()) == 1


def test_a_setting_added_later_is_no_difference(tmp_path: Path) -> None:
    """A run made before a setting existed (no `init_from` in its params.json) against one that
    records its default: the same run, so the claim stands without "differ too"."""
    base, lrn = tmp_path / "baseline", tmp_path / "no-lrn"
    fake_run(base, 0.40, 0.20)
    params = json.loads((base / "params.json").read_text())
    del params["config"]["init_from"]
    (base / "params.json").write_text(json.dumps(params))
    fake_run(lrn, 0.43, 0.22, switches={"norm": "none"})
    out = tmp_path / "cmp"
    result = CliRunner().invoke(report_main, ["--compare", str(base), str(lrn), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert rows_of((out / "compare.md").read_text())["no-lrn"][12] == "§3.3: +1.4 / +1.2"
