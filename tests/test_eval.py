"""Evaluation and the run viewer: pass@k, the summary (judge, by task type, task hook), the
results table, the loaders (AIME-layout JSON, jsonl), the curves, the PNG and the episode renderer."""
import itertools
import json
import random
import sys

import pytest

import eval as evaluation
import viewer
from agents import MATH
from config import UserError
from rollout import Action, Episode
from runlog import episode_record
from tasks.grader import is_equiv
from tasks.problems import Problem, load_problems
from tests.conftest import ROOT


# ----------------------------------------------------------------------------- pass@k
def brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Share of the k-subsets of n samples (the first c correct) that hold a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 7))
def test_pass_at_k_equals_the_share_of_k_subsets_with_a_correct_sample(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert evaluation.pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k))
    assert evaluation.pass_at_k(n, 0, 1) == 0.0 and evaluation.pass_at_k(n, n, 1) == 1.0


@pytest.mark.parametrize("n, c, k", [(2, 0, 4), (3, 4, 1), (3, 1, 0)])
def test_pass_at_k_rejects_impossible_counts(n, c, k):
    with pytest.raises(ValueError, match="pass@k needs"):
        evaluation.pass_at_k(n, c, k)


# ----------------------------------------------------------------------------- the summary
def episode(task, correct, scores, boxed=True, tool="ok"):
    """A graded math episode: solver, executor (ran code), verifier, with these coach scores."""
    ep = Episode(task, task.problem, answer="5" if boxed else None, correct=correct)
    texts = ["so \\boxed{5}", "```python\nprint(5)\n```", "\\boxed{5}" if boxed else "five"]
    for (agent, text), s in zip(zip(("solver", "executor", "verifier"), texts), scores):
        ep.actions.append(Action(agent, 0, [], [1, 2], [3] * len(text), text, False, score=s,
                                 tool_output="5\n" if agent == "executor" else None,
                                 tool_status=tool if agent == "executor" else None))
    return ep


def test_summary_accuracy_judge_format_and_task_types():
    a = Problem("a", "A?", "5", kind="easy")
    b = Problem("b", "B?", "5", kind="hard")
    eps = [episode(a, True, [8, 6, 9]), episode(a, False, [4, 6, 2], boxed=False),
           episode(b, False, [2, None, 7], tool=None), episode(b, False, [3, 5, 1])]
    out = evaluation.summarize(eps, MATH, k=2)
    s = out["summary"]
    assert s["avg@2"] == 0.25 and s["pass@2"] == 0.5 and s["tasks"] == 2 and s["episodes"] == 4
    assert s["format/boxed"] == 0.75
    assert s["solver/score_mean"] == pytest.approx(17 / 4) and s["executor/unscored"] == 1
    assert s["executor/tool_use"] == 0.75 and "solver/tool_use" not in s
    # verifier scores 9 (right), 2, 7, 1 (wrong): at threshold 5, 7 is the coach's one mistake
    assert s["coach/judge_accuracy"] == 0.75
    assert s["coach/judge_auc"] == 1.0  # every correct episode outscores every wrong one
    assert s["coach/score_correct"] == 9 and s["coach/score_wrong"] == pytest.approx(10 / 3)
    kinds = out["by_kind"]
    assert kinds["easy/accuracy"] == 0.5 and kinds["hard/accuracy"] == 0.0 and kinds["hard/episodes"] == 2
    assert kinds["easy/solver_score"] == 6 and kinds["hard/executor_score"] == 5
    assert out["tasks"][0] == {"id": "a", "correct": [True, False], "answers": ["5", None]}


def test_without_a_coach_the_summary_and_the_rollout_metrics_have_no_coach_keys():
    """In-training eval (--eval-every) and --reward outcome run no coach: no action is 'unscored',
    no coach/* NaN -- the keys are left out."""
    from runlog import rollout_metrics
    a = Problem("a", "A?", "5")
    eps = [episode(a, True, [None, None, None]), episode(a, False, [None, None, None], boxed=False)]
    s = evaluation.summarize(eps, MATH, k=2, coached=False)["summary"]
    assert not [k for k in s if k.startswith("coach/") or k.endswith(("/unscored", "/score_mean"))], s
    assert s["avg@2"] == 0.5 and s["solver/length"] > 0 and s["executor/tool_use"] == 1.0
    m = rollout_metrics(eps, MATH, coached=False)
    assert "solver/unscored" not in m and "solver/score_mean" not in m and m["solver/actions"] == 2
    assert rollout_metrics(eps, MATH)["solver/unscored"] == 2  # with a coach, unscored is counted


def test_metrics_jsonl_holds_null_never_bare_nan(tmp_path):
    from runlog import RunLog
    RunLog(tmp_path, MATH, n_samples=0, quiet=True).log(
        {"step": 1, "solver/kl": float("nan"), "solver/loss": float("inf"), "solver/trained": 0, "x": 0.5}, [])
    line = (tmp_path / "metrics.jsonl").read_text()
    strict = lambda constant: pytest.fail(f"bare {constant} in metrics.jsonl")  # noqa: E731
    assert json.loads(line, parse_constant=strict) == {"step": 1, "solver/kl": None, "solver/loss": None,
                                                        "solver/trained": 0, "x": 0.5}
    assert viewer.training_curves([json.loads(line)])["reward (0-1)"] == {}  # the viewer reads null as no point


def test_judge_auc_counts_ties_half_and_is_nan_without_both_outcomes():
    t = Problem("t", "T?", "5")
    m = evaluation.judge_metrics([episode(t, True, [0, 0, 6]), episode(t, False, [0, 0, 6])], "verifier")
    assert m["coach/judge_auc"] == 0.5 and m["coach/judge_accuracy"] == 0.5
    m = evaluation.judge_metrics([episode(t, True, [0, 0, 6])], "verifier")
    assert m["coach/judge_auc"] != m["coach/judge_auc"]  # nan


def test_judge_auc_agrees_with_the_naive_pairwise_count():
    rng = random.Random(0)
    eps = [episode(Problem(f"t{i}", "T?", "5"), rng.random() < 0.4, [0, 0, rng.randint(0, 10)]) for i in range(300)]
    right = [ep.actions[-1].score for ep in eps if ep.correct]
    wrong = [ep.actions[-1].score for ep in eps if not ep.correct]
    naive = sum((r > w) + 0.5 * (r == w) for r in right for w in wrong) / (len(right) * len(wrong))
    assert evaluation.judge_metrics(eps, "verifier")["coach/judge_auc"] == pytest.approx(naive, abs=1e-12)
    hand = [episode(Problem("a", "A?", "5"), ok, [0, 0, s]) for ok, s in ((True, 9), (True, 4), (False, 4), (False, 1))]
    assert evaluation.judge_metrics(hand, "verifier")["coach/judge_auc"] == 0.875  # (1 + 1 + 0.5 + 1) / 4


def test_a_failed_episode_is_kept_counted_wrong_and_not_coached(monkeypatch):
    from config import Config

    def fake_rollout(model, tokenizer, agents, batch, **kwargs):  # every verifier boxes the gold answer
        for i, ep in enumerate(batch):
            ep.actions.append(Action("verifier", 0, [], [1], [2], f"\\boxed{{{ep.task.answer}}}", False))
            ep.error = "verifier: ValueError: prompt too long" if i == 0 else None

    class Coach:
        def score(self, items):
            self.items = items
            return [7.0] * len(items)

    monkeypatch.setattr(evaluation, "rollout", fake_rollout)
    coach = Coach()
    eps = evaluation.run_episodes(None, None, Config(), MATH, k=2, limit=2, coach=coach)
    assert [ep.correct for ep in eps] == [False, True, True, True]
    assert len(coach.items) == 3 and all(ep is not eps[0] for ep, _ in coach.items)
    s = evaluation.summarize(eps, MATH, 2)["summary"]
    assert s["failed"] == 1 and s["avg@2"] == 0.75 and s["pass@2"] == 1.0


def test_task_metrics_hook_is_per_task(monkeypatch):
    t = Problem("t", "T?", "5")
    eps = [episode(t, True, [5, 5, 5])]
    assert "format/boxed" not in evaluation.summarize(eps, MATH, 1, task="other")["summary"]
    monkeypatch.setitem(evaluation.TASK_METRICS, "other", lambda e, a: {"other/n": len(e)})
    assert evaluation.summarize(eps, MATH, 1, task="other")["summary"]["other/n"] == 1


def test_results_table_has_a_column_per_pipeline_and_differences_to_the_first():
    results = {"base": {"summary": {"avg@4": 0.25, "tasks": 30}}, "run-a": {"summary": {"avg@4": 0.5, "tasks": 30}},
               "run-b": {"summary": {"avg@4": 0.125, "extra": 1.0}}}
    lines = evaluation.format_results(results).splitlines()
    assert lines[0].split() == ["metric", "base", "run-a", "run-b", "Δ", "run-a", "Δ", "run-b"]
    assert lines[1].split() == ["avg@4", "0.250", "0.500", "0.125", "+0.250", "-0.125"]
    assert lines[2].split() == ["tasks", "30", "30", "-"]
    assert lines[3].split() == ["extra", "-", "-", "1.000"]


# ----------------------------------------------------------------------------- loaders
def test_the_aime_sample_loads_with_its_answer_forms():
    problems = load_problems(str(ROOT / "examples" / "aime-sample.json"), "eval")
    raw = json.loads((ROOT / "examples" / "aime-sample.json").read_text())
    assert [p.id for p in problems] == [r["id"] for r in raw] and len(problems) == 5
    answers = {p.id: p.answer for p in problems}
    assert answers["sample-2"] == "023" and is_equiv("23", answers["sample-2"])
    assert answers["sample-3"] == "235"  # 235.0 in the file
    assert is_equiv("216", answers["sample-4"]) and not is_equiv("144", answers["sample-4"])
    assert evaluation.default_split("builtin") == "eval" and evaluation.default_split("AI-MO/aimo-validation-aime") == "train"
    assert evaluation.default_split("builtin-easy") == "eval"  # the laptop preset evaluates on held-out problems


def test_read_jsonl_skips_blank_lines_and_names_a_bad_line(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2, "x": NaN}\n')
    rows = viewer.read_jsonl(path)
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["x"] != rows[1]["x"]
    path.write_text('{"step": 1}\n{"step": 2, "x"\n')
    with pytest.raises(UserError, match=r"m.jsonl:2: malformed JSON"):
        viewer.read_jsonl(path)
    with pytest.raises(UserError, match="not found"):
        viewer.read_jsonl(tmp_path / "missing.jsonl")


# ----------------------------------------------------------------------------- curves
METRICS = [
    {"step": 1, "episode/accuracy": 0.0, "solver/reward_mean": 0.4, "solver/kl": 0.0, "solver/length": 10,
     "solver/unscored": 1, "solver/actions": 4, "executor/reward_mean": 0.5, "executor/actions": 8,
     "executor/unscored": 0, "executor/tool_use": 0.5},
    {"step": 2, "episode/accuracy": 0.5, "solver/reward_mean": 0.6, "solver/kl": 0.01, "solver/length": 8,
     "solver/unscored": 2, "solver/actions": 4, "executor/reward_mean": float("nan"), "executor/actions": 0,
     "executor/unscored": 0, "executor/tool_use": 1.0},
    {"step": 2, "eval/avg@1": 0.25},
]


def test_training_curves_per_agent_with_unscored_share_and_eval_points():
    c = viewer.training_curves(METRICS)
    assert c["reward (0-1)"]["solver"] == ([1, 2], [0.4, 0.6])
    assert c["unscored share"]["solver"] == ([1, 2], [0.25, 0.5])
    assert c["unscored share"]["executor"] == ([1], [0.0])  # no actions at step 2: no share
    assert c["code tool use"] == {"executor": ([1, 2], [0.5, 1.0])}
    assert c["episode accuracy"] == {"rollout": ([1, 2], [0.0, 0.5]), "eval/avg@1": ([2], [0.25])}


def test_smooth_is_a_trailing_mean_that_skips_nan():
    nan = float("nan")
    out = viewer.smooth([1.0, 3.0, nan, 5.0], 2)
    assert out[:2] == [1.0, 2.0] and out[2] != out[2] and out[3] == 5.0
    assert viewer.smooth([1.0, 2.0], 1) == [1.0, 2.0]


def test_plot_writes_a_png_and_missing_matplotlib_is_one_clear_error(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in METRICS))
    out = viewer.plot_runs([run, run], tmp_path / "c.png", window=2)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(UserError, match="pip install matplotlib"):
        viewer.plot_runs([run], tmp_path / "d.png")


@pytest.mark.parametrize("n_steps", [1, 3])
def test_a_short_run_plots_visible_markers_and_integer_step_ticks(tmp_path, n_steps):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(METRICS[0] | {"step": i + 1}) + "\n"
                                               for i in range(n_steps)))
    fig = viewer.draw_runs([run])
    drawn = [ax for ax in fig.axes if ax.has_data()]
    assert len(drawn) >= 5
    for ax in drawn:
        assert all(line.get_marker() == "o" for line in ax.get_lines())  # one point is still seen
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks == list(range(1, n_steps + 1)), ticks


# ----------------------------------------------------------------------------- one episode
def saved_episodes():
    """Records as train.py saves them: two steps, the second with two episodes."""
    recs = []
    for step, n in ((1, 1), (2, 2)):
        for i in range(n):
            ep = episode(Problem(f"p{step}{i}", f"Problem {step}.{i}: what is [b]2+3[/b]?", "5"), True, [7, 6.5, None])
            ep.actions[0].coach_text = "The solver reasons cleanly.\nPROCESS_SCORE: 7"
            recs.append(json.loads(json.dumps(episode_record(ep, step))))
    return recs


def test_pick_episode_defaults_to_the_last_step_and_explains_misses():
    recs = saved_episodes()
    assert viewer.pick_episode(recs)["task"]["id"] == "p20"
    assert viewer.pick_episode(recs, index=1)["task"]["id"] == "p21"
    assert viewer.pick_episode(recs, step=1)["task"]["id"] == "p10"
    assert viewer.pick_episode(recs, task="p21")["step"] == 2
    with pytest.raises(UserError, match=r"no saved episode for step 9; this file has steps 1..2"):
        viewer.pick_episode(recs, step=9)
    with pytest.raises(UserError, match=r"--episode 5 is out of range: 2 episodes match \(0..1\)"):
        viewer.pick_episode(recs, index=5)


def test_episode_renders_actions_tool_output_scores_and_the_coach_rationale():
    text = viewer.render_text(viewer.episode_view(saved_episodes()[0]), width=120)
    for needle in ("task p10", "step 1", "gold '5'", "correct", "Problem 1.0: what is [b]2+3[/b]?",
                   "solver · action 1 · coach 7.0/10", "executor · action 1 · coach 6.5/10",
                   "verifier · action 1 · coach unscored", "tool output · ok", "print(5)",
                   "coach's rationale", "The solver reasons cleanly."):
        assert needle in text, needle
    assert text.index("solver ·") < text.index("executor ·") < text.index("verifier ·")
    assert "what it saw" not in text


def test_episode_render_filters_by_agent_and_shows_inputs_on_request():
    rec = saved_episodes()[0]
    rec["actions"][1]["messages"] = [{"role": "system", "content": "ROLE"}, {"role": "user", "content": "the solver said 5"}]
    text = viewer.render_text(viewer.episode_view(rec, agent="executor", show_input=True), width=100)
    assert "executor · action 1" in text and "solver ·" not in text and "verifier ·" not in text
    assert "what it saw" in text and "the solver said 5" in text and "ROLE" not in text
    with pytest.raises(UserError, match="agent 'critic' has no action in this episode; agents here: solver, executor, verifier"):
        viewer.episode_view(rec, agent="critic")


# ----------------------------------------------------------------------------- CLI input checks
def make_run(folder, trained=True, **fields):
    from config import Config, save_config
    folder.mkdir(parents=True)
    save_config(Config(**fields), folder / "config.json")
    if trained:
        (folder / "adapters").mkdir()
    return str(folder)


def test_columns_put_the_base_first_and_check_every_run_before_loading(tmp_path):
    a, b = make_run(tmp_path / "x" / "run"), make_run(tmp_path / "y" / "run")
    args = evaluation.parse_eval_args([a, b, "--base"])
    cols = evaluation.plan_columns(args)
    assert [(name, is_base) for name, _, _, is_base in cols] == [("base", True), ("run", False), (b, False)]
    assert [name for name, *_ in evaluation.plan_columns(evaluation.parse_eval_args([a, "--base-only"]))] == ["base"]
    bare = make_run(tmp_path / "bare", trained=False)
    with pytest.raises(UserError, match="no trained adapters yet"):
        evaluation.plan_columns(evaluation.parse_eval_args([a, bare]))
    other = make_run(tmp_path / "other", model="tiny")
    with pytest.raises(UserError, match="--base needs runs of one base model"):
        evaluation.plan_columns(evaluation.parse_eval_args([a, other, "--base"]))


@pytest.mark.parametrize("argv, message", [
    (["/no/such/run"], "is not a run folder"),
    (["RUN", "--k", "0"], "--k must be >= 1"),
    (["RUN", "--threads", "-2"], "--threads must be >= 0"),
    (["RUN", "--bogus"], "unrecognized arguments: --bogus"),
    ([], "the following arguments are required: RUN"),
    (["show", "RUN", "--episode", "3"], "--episode 3 is out of range"),
    (["plot", "RUN", "--smooth", "0"], "--smooth must be >= 1"),
])
def test_bad_eval_input_is_one_line_and_exit_code_2(argv, message, tmp_path, capsys):
    run = make_run(tmp_path / "run")
    (tmp_path / "run" / "samples.jsonl").write_text(json.dumps(saved_episodes()[0]) + "\n")
    with pytest.raises(SystemExit) as e:
        evaluation.main([run if a == "RUN" else a for a in argv])
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
