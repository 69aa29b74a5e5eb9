"""alexnet-report: curves.png and summary.md from a run folder's params.json and metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests import fakes
from trainer.cli import report_main
from trainer.config import TrainConfig


def fake_run(run: Path, **config: object) -> None:
    run.mkdir(parents=True)
    cfg = TrainConfig(shards="s", out=str(run), **config).to_dict()
    fakes.write_params(run, cfg, world_size=2)
    records = []
    for epoch in range(3):
        for s in range(1, 5):
            step = epoch * 4 + s
            records.append({"kind": "train", "epoch": epoch, "step": step, "loss": 1.4 - 0.05 * step,
                            "lr": 0.01 if epoch < 2 else 0.001, "images_per_s": 10.0, "data_wait": 0.1})
        records.append({"kind": "epoch", "epoch": epoch, "step": 4 * (epoch + 1),
                        "train_loss": 1.3 - 0.1 * epoch,
                        "val_loss": 1.35 - 0.1 * epoch, "val_top1_err": [0.7, 0.5, 0.55][epoch],
                        "val_top5_err": 0.0, "val_samples": 16, "lr": 0.01, "images_per_s": 9.5 + epoch,
                        "data_wait": 0.2, "epoch_s": 3.0})
    records.append({"kind": "final", "epoch": 2, "step": 12, "ten_crop_loss": 1.1,
                    "ten_crop_top1_err": 0.4375,
                    "ten_crop_top5_err": 0.0, "ten_crop_samples": 16})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_report_writes_png_and_summary(tmp_path: Path) -> None:
    run = tmp_path / "demo"
    fake_run(run, epochs=3, init="kaiming", batch_size=8, ten_crop=False, note="CPU smoke run")
    result = CliRunner().invoke(report_main, [str(run)])
    assert result.exit_code == 0, result.output
    png = (run / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    md = (run / "summary.md").read_text()
    assert "| final (epoch 3) | 55.00% | 0.00% |" in md
    assert "| best | 50.00% (epoch 2)" in md
    assert "| 10-crop, final (§6) | 43.75% | 0.00% |" in md
    assert "10 images/s" in md  # median of 9.5, 10.5, 11.5 -> 10.5 rounds to 10
    assert "`--init kaiming` (default `--init paper`): paper init needs many epochs" in md
    assert "`--batch-size 8` (default `--batch-size 128`)" in md and "`--epochs 3`" in md
    assert "`--no-ten-crop` (default `--ten-crop`)" in md
    assert "Note: CPU smoke run" in md


def test_report_of_paper_defaults_lists_no_differences(tmp_path: Path) -> None:
    run = tmp_path / "paper"
    fake_run(run)
    assert CliRunner().invoke(report_main, [str(run)]).exit_code == 0
    md = (run / "summary.md").read_text()
    assert "- none" in md
    assert "over 2 process(es)" in md and "hybrid" not in md


def test_report_names_the_hybrid_scheme_but_not_as_a_difference(tmp_path: Path) -> None:
    """--parallel hybrid computes the same gradients: the summary says how the run was spread, and
    lists no departure from the paper for it."""
    run = tmp_path / "hybrid"
    fake_run(run, parallel="hybrid")
    assert CliRunner().invoke(report_main, [str(run)]).exit_code == 0
    md = (run / "summary.md").read_text()
    assert "global batch 128 over 2 process(es) (hybrid: fc6/fc7 split across them)" in md
    assert "- none" in md and "--parallel" not in md


def test_report_on_a_folder_that_is_not_a_run_fails_cleanly(tmp_path: Path) -> None:
    result = CliRunner().invoke(report_main, [str(tmp_path)])
    assert result.exit_code != 0
    assert "no params.json (not an alexnet-train run folder)" in result.output
    assert list(tmp_path.iterdir()) == []


def test_malformed_metrics_or_params_is_one_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fake_run(run)
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(lines[:3]) + "{not json\n" + "".join(lines[3:]))
    result = CliRunner().invoke(report_main, [str(run)])
    assert result.exit_code == 1, result.output
    assert f"{run / 'metrics.jsonl'} line 4: not a JSON record" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1

    (run / "metrics.jsonl").write_text("".join(lines[:3]) + '["a list"]\n')
    result = CliRunner().invoke(report_main, [str(run)])
    assert result.exit_code == 1 and "line 4: not a metrics record" in result.output

    (run / "metrics.jsonl").write_text("".join(lines))
    for text, message in (('{"config": {', "params.json: not readable JSON"),
                          ('{"config": {}}', "params.json: not an alexnet-train params.json (no shards)"),
                          ('{"config": {}, "shards": {}}', "params.json or metrics.jsonl lacks or garbles")):
        (run / "params.json").write_text(text)
        result = CliRunner().invoke(report_main, [str(run)])
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output
        assert not list(run.glob("*.png")) and not (run / "summary.md").exists()


def test_a_half_written_last_line_is_a_write_in_progress(tmp_path: Path) -> None:
    """A run still writing (or killed mid-line) leaves a last line without its newline: skipped."""
    whole = tmp_path / "whole"
    fake_run(whole)
    run = tmp_path / "run"
    fake_run(run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "epo')
    result = CliRunner().invoke(report_main, [str(run)])
    assert result.exit_code == 0, result.output
    assert CliRunner().invoke(report_main, [str(whole)]).exit_code == 0
    # Skipped: the summary is the one of the same run without the partial line (but for its title).
    summary = (run / "summary.md").read_text()
    assert summary.replace("# run", "# whole", 1) == (whole / "summary.md").read_text()


def drawn_figure(run: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run alexnet-report and keep the matplotlib figure it saves, to look at what it drew."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    saved: list[Figure] = []
    real = Figure.savefig

    def keep(self: Figure, *a: Any, **k: Any) -> Any:
        saved.append(self)
        return real(self, *a, **k)

    monkeypatch.setattr(Figure, "savefig", keep)
    result = CliRunner().invoke(report_main, [str(run)])
    assert result.exit_code == 0, result.output
    return saved[0]


def test_curves_title_panels_ticks_and_ten_crop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "demo-run"
    fake_run(run, epochs=3, init="kaiming", batch_size=8)
    fig = drawn_figure(run, monkeypatch)
    title = fig._suptitle.get_text()
    assert title.startswith("demo-run: ") and "--epochs 3" in title and "--init kaiming" in title
    axes = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
    assert set(axes) == {"loss", "error", "learning rate", "speed"}
    fig.canvas.draw()
    for ax in axes.values():
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)
    err = axes["error"]
    labels = err.get_legend_handles_labels()[1]
    assert any(label.startswith("train error: not logged") for label in labels)
    # The 10-crop points sit beside the last centre-crop point (epoch 3), not on top of it.
    stars = [c.get_offsets() for c in err.collections if len(c.get_offsets())]
    assert stars and all(abs(o[0][0] - 3) > 0.1 for o in stars)
    assert sorted(round(o[0][1], 2) for o in stars) == [0.0, 43.75]
    # Throughput and data wait (on a twin axis) per epoch.
    speed_lines = [line for ax in fig.axes for line in ax.get_lines()
                   if line.get_label() in ("images/s (epoch)", "data wait (epoch)")]
    assert len(speed_lines) == 2
    assert list(speed_lines[0].get_ydata()) == [9.5, 10.5, 11.5]
    assert list(speed_lines[1].get_ydata()) == [20.0, 20.0, 20.0]


def test_curves_title_of_the_paper_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "paper"
    fake_run(run)
    assert drawn_figure(run, monkeypatch)._suptitle.get_text() == "paper: the paper's settings"


@pytest.mark.parametrize("classes", [4, 1000])
def test_paper_reference_lines_only_for_ilsvrc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               classes: int) -> None:
    run = tmp_path / "run"
    fake_run(run)
    params = json.loads((run / "params.json").read_text())
    params["shards"]["classes"] = classes
    (run / "params.json").write_text(json.dumps(params))
    err = next(ax for ax in drawn_figure(run, monkeypatch).axes if ax.get_title() == "error")
    levels = {round(line.get_ydata()[0], 1) for line in err.get_lines() if line.get_linestyle() == ":"
              and len(line.get_ydata())}
    assert levels == ({40.7, 18.2} if classes == 1000 else set())


def test_curves_draw_the_train_error_beside_the_val_error(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    run = tmp_path / "run"
    fake_run(run, epochs=3)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for r in records:
        if r["kind"] == "epoch":
            r["train_top1_err"] = 0.5 - 0.1 * r["epoch"]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    err = next(ax for ax in drawn_figure(run, monkeypatch).axes if ax.get_title() == "error")
    (line,) = [ln for ln in err.get_lines() if ln.get_label().startswith("train top-1")]
    assert list(line.get_xdata()) == [1, 2, 3]
    assert [round(y, 6) for y in line.get_ydata()] == [50.0, 40.0, 30.0]


def test_the_report_entry_point_imports_no_dali_and_the_benches_are_still_there() -> None:
    """alexnet-report (trainer.cli:report_main, as the console script and the GPU check import it) used
    to import DALI through alexnet-bench's command registration: seconds of a 10 s budget for nothing."""
    import subprocess
    import sys

    from trainer.cli import bench_main

    code = ("import sys\n"
            "from trainer.cli import report_main\n"
            "print(sorted(m for m in ('nvidia.dali', 'pipeline.bench', 'trainer.benchmarks.bench',"
            " 'trainer.benchmarks.comm') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    listed = CliRunner().invoke(bench_main, ["--help"])
    assert listed.exit_code == 0
    assert [line.split()[0] for line in listed.output.split("Commands:")[1].strip().splitlines()] == \
        ["comm", "pipeline", "train"]
