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


def test_the_coach_judge_labels_each_action_by_the_answer_it_commits_to():
    from experiments.coach_judge import auc, committed_answer, labels
    from rollout import Action, Episode
    from tasks.problems import Problem

    def act(agent, text, tool=None):
        return Action(agent, 0, [], [], [], text, False, tool_output=tool)
    assert committed_answer(act("solver", "so 3 + 4 = 7, \\boxed{21} wait")) == "21"  # the box wins
    assert committed_answer(act("executor", "print(x) gives 20", "21\n")) == "21"  # then what the code printed
    assert committed_answer(act("solver", "the total is 1,000 apples")) == "1000"
    assert committed_answer(act("solver", "no idea")) is None
    ep = Episode(Problem("p", "?", "21"), "?", [act("solver", "\\boxed{21}"), act("executor", "x", "20"),
                                              act("verifier", "\\boxed{21}")], correct=False)
    # the final agent's label is the episode's outcome, not its own text
    assert labels([ep], "verifier") == [("solver", True), ("executor", False), ("verifier", False)]
    assert auc([9, 1, 5], [True, False, False]) == 1.0 and auc([1, 9], [True, False]) == 0.0
    assert auc([1, 2], [True, True]) != auc([1, 2], [True, True])  # nan: one class only
