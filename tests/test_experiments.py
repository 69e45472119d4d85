"""experiments/laptop.py end to end on the tiny preset: it trains each (arm, seed), evaluates the
untrained pipeline and every team on the same held-out problems, and writes its summary; a second
call reuses the finished runs. No learning claim: that lives in docs/laptop.md."""
import json

from tests.test_cli import run


def test_the_laptop_experiment_trains_evaluates_and_summarises(tmp_path):
    out = tmp_path / "laptop"
    args = ("-m", "experiments.laptop", "--preset", "tiny", "--arms", "process,outcome", "--seeds", "1",
            "--steps", "1", "--problems", "2", "--k", "1", "--out", str(out))
    proc = run(*args, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["arms"]) == {"process", "outcome"} and summary["base"]["accuracy"] is not None
    assert (out / "summary.md").read_text().startswith("Held-out accuracy (avg@1")
    assert (out / "curves.png").stat().st_size > 0
    before = (out / "runs" / "process-s0" / "metrics.jsonl").read_text()
    proc = run(*args, timeout=600)  # finished runs are kept, not trained again
    assert proc.returncode == 0 and (out / "runs" / "process-s0" / "metrics.jsonl").read_text() == before
