"""`python -m pipeline.boundary`: one row per epoch boundary, and the command's report. Tiny sizes on
the CPU: the figures themselves mean nothing here, only their shape."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from pipeline.boundary import command, measure


def test_measure_gives_one_row_per_boundary(pipeline_shards: tuple[Path, dict]) -> None:
    rows = measure(str(pipeline_shards[0]), batch_size=8, epochs=3, step_s=0.001, device="cpu",
                   overlap_epochs=True)
    assert len(rows) == 2
    assert all(set(r) == {"boundary_s", "worst_step_s"} and min(r.values()) >= 0 for r in rows)


def test_command_reports_both_figures(pipeline_shards: tuple[Path, dict]) -> None:
    result = CliRunner().invoke(command, ["--shards", str(pipeline_shards[0]), "--batch-size", "8",
                                          "--epochs", "2", "--step-ms", "1", "--no-overlap"])
    assert result.exit_code == 0, result.output
    assert "overlap_epochs=False" in result.output
    for name in ("boundary next()", "worst step delay"):
        assert name in result.output and "(boundaries: " in result.output
