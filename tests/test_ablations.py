"""alexnet-ablations: the baseline and one alexnet-train run per claim of the paper."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from tests.test_compare import fake_run
from trainer.cli import ablations_main
from trainer.experiments import ablations


def test_print_gives_one_train_command_per_claim() -> None:
    result = CliRunner().invoke(ablations_main, ["--shards", "sh", "--out", "runs/abl", "--epochs", "4",
                                                 "--print", "--", "--init", "kaiming", "--batch-size", "32"])
    assert result.exit_code == 0, result.output
    common = "--shards sh --out runs/abl/{} --epochs 4"
    extra = "--init kaiming --batch-size 32"
    assert result.output.splitlines() == [
        f"alexnet-train {common.format('baseline')} {extra}",
        f"alexnet-train {common.format('no-lrn')} --norm none {extra}",
        f"alexnet-train {common.format('nonoverlap-pool')} --pool nonoverlap {extra}",
        f"alexnet-train {common.format('one-column')} --columns 1 {extra}",
        f"alexnet-train {common.format('no-lighting')} --lighting off {extra}",
        f"alexnet-train {common.format('no-dropout')} --dropout 0 {extra}",
        f"alexnet-train {common.format('no-augment')} --augment none {extra}",
        f"alexnet-train {common.format('tanh')} --activation tanh {extra}",
    ]


def test_print_quotes_paths_for_the_shell() -> None:
    result = CliRunner().invoke(ablations_main, ["--shards", "my shards", "--out", "o", "--print"])
    assert result.output.splitlines()[0] == "alexnet-train --shards 'my shards' --out o/baseline --epochs 90"


def test_runs_in_sequence_then_compares(tmp_path: Path, monkeypatch) -> None:
    """Each run is a subprocess of alexnet-train; here a stand-in writes the run folder, so the test
    checks the sequence, the --resume of a run with checkpoints, and the comparison of what finished."""
    calls = []

    def fake(argv: list[str]) -> int:
        calls.append(argv)
        out = Path(argv[argv.index("--out") + 1])
        if out.name == "one-column":
            return 2
        if not (out / "params.json").exists():
            fake_run(out, 0.4 if out.name == "baseline" else 0.42, 0.2)
        return 0

    # The training runs only: patching subprocess.run itself also caught matplotlib's first import on
    # a fresh machine (it runs fc-list to build its font cache), which then failed.
    monkeypatch.setattr(ablations, "run_training", fake)
    (tmp_path / "no-lrn" / "checkpoints").mkdir(parents=True)
    (tmp_path / "no-lrn" / "checkpoints" / "step-4.pt").write_bytes(b"x")
    lines: list[str] = []
    status = ablations.main("sh", str(tmp_path), 3, ["--init", "kaiming"], echo=lines.append)
    assert status == 1  # one run failed
    assert [Path(a[a.index("--out") + 1]).name for a in calls] == [n for n, _ in ablations.runs()]
    assert calls[0][1:3] == ["-m", "trainer.cli"]
    assert calls[1][-1] == "--resume" and "--resume" not in calls[0]
    assert lines[-1] == "error: 1 run(s) failed: one-column"
    md = (tmp_path / "compare.md").read_text()
    assert "| `no-lrn` |" in md and "| `no-lighting` |" in md and "one-column" not in md
