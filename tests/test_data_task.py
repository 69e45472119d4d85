"""The data pipeline end to end with scripted agents: hand-written code (not a model) runs through
the real rollout, sandbox, shared workspace, grader and coach prompt. Also the workspace helpers,
the outcome summary, and the data task's command lines."""
import json
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

import eval as evaluation
import rollout
import sandbox
from agents import DATA, add_adapters, load_base
from reward import LLMCoach, grade
from rollout import Episode
from tasks import submission, tabular, workspace
from tests.test_cli import run

ENGINEER = '''```python
import joblib
import pandas as pd
from sklearn.compose import ColumnTransformer, make_column_selector
from sklearn.impute import SimpleImputer
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

train, test = pd.read_csv("train.csv"), pd.read_csv("test.csv")
target = [c for c in train.columns if c not in test.columns][0]
id_col = test.columns[0]
X, X_test = train.drop(columns=[id_col, target]), test.drop(columns=[id_col])
pre = ColumnTransformer([
    ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
     make_column_selector(dtype_include="number")),
    ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"),
                          OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
     make_column_selector(dtype_exclude="number"))])
pd.DataFrame(pre.fit_transform(X)).to_pickle("X_train.pkl")
train[target].to_pickle("y_train.pkl")
pd.DataFrame(pre.transform(X_test)).to_pickle("X_test.pkl")
joblib.dump(pre, "preprocess.pkl")
print("features", X.shape, "target", target)
```'''
MODELER = '''```python
import joblib
import pandas as pd
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import cross_val_score

X, y = pd.read_pickle("X_train.pkl"), pd.read_pickle("y_train.pkl")
regression = pd.api.types.is_numeric_dtype(y) and y.nunique() > 20
model = Ridge() if regression else LogisticRegression(max_iter=1000)
print("cross-validation score", cross_val_score(model, X, y, cv=3).mean().round(3))
joblib.dump(model.fit(X, y), "model.pkl")
```'''
ANALYST = '''```python
import joblib
import pandas as pd

model, X_test, test = joblib.load("model.pkl"), pd.read_pickle("X_test.pkl"), pd.read_csv("test.csv")
target = [c for c in pd.read_csv("train.csv", nrows=1).columns if c not in test.columns][0]
sub = pd.DataFrame({test.columns[0]: test[test.columns[0]], target: model.predict(X_test)})
if hasattr(model, "predict_proba") and len(model.classes_) == 2:
    sub["probability"] = model.predict_proba(X_test)[:, 1]  # classes_ are sorted: P(positive)
sub.to_csv("submission.csv", index=False)
print(len(sub), "rows")
```'''
DONE = "My files are saved; nothing more to do."
PERFECT = {"engineer": [ENGINEER, DONE], "modeler": [MODELER, DONE], "analyst": [ANALYST, DONE]}
FORGETFUL = {**PERFECT, "engineer": [ENGINEER.replace(
    'pd.DataFrame(pre.transform(X_test)).to_pickle("X_test.pkl")\n', ""), DONE]}


def pick_tasks():
    """A binary task with string labels scored by ROC AUC, and a regression task."""
    tasks = tabular.builtin_tabular("eval")
    auc = next(t for t in tasks if t.metric == "roc_auc" and isinstance(t.pos_label, str))
    return [auc, next(t for t in tasks if t.kind == "regression")]


@pytest.fixture(scope="module")
def trio():
    """Two episodes, one rollout: the perfect trio on one task, the forgetful trio on the other.
    (Each code action pays ~1-3 s for importing scikit-learn, so the episodes are few.)"""
    tokenizer, base = load_base("tiny", load_in_4bit=False, device="cpu")
    model = add_adapters(base, DATA, r=4, alpha=8)
    scripts = [PERFECT, FORGETFUL]  # generate gets one prompt per episode, in order

    def fake_generate(model_, tokenizer_, prompts, max_new_tokens, temperature, batch_size, logprobs=None, **_):
        agent = model_.active_adapter
        assert len(prompts) == len(scripts)  # every episode acts twice per agent: order holds
        turn = fake_generate.turns.get(agent, 0)
        fake_generate.turns[agent] = turn + 1
        return [(tokenizer.encode(s[agent][turn]) + [tokenizer.eos_token_id], False) for s in scripts]

    fake_generate.turns = {}
    tasks = pick_tasks()
    episodes = [Episode(t, t.description, workdir=workspace.new_workspace(t)) for t in tasks]
    mp = pytest.MonkeyPatch()
    mp.setattr(rollout, "generate", fake_generate)
    try:
        rollout.rollout(model, tokenizer, DATA, episodes, temperature=1.0, max_new_tokens=64, batch_size=8,
                        limits=sandbox.Limits(timeout_s=120, memory_mb=2048))
        for ep in episodes:
            grade(ep, DATA)
        yield SimpleNamespace(model=model, tokenizer=tokenizer, episodes=episodes)
    finally:
        mp.undo()
        workspace.remove_workspaces(episodes)


def by_agent(ep, agent, turn):
    return next(a for a in ep.actions if a.agent == agent and a.turn == turn)


def constant_submission(tmp_path, task):
    """The score of P(positive) = 0.5 for every row (labels: the negative class): the bar to clear."""
    pd.DataFrame({task.id_col: task.test[task.id_col], task.target: 0.5}).to_csv(
        tmp_path / "constant.csv", index=False)
    return submission.score_submission(task, tmp_path / "constant.csv")


def test_perfect_trio_leaves_every_file_and_a_good_submission(trio, tmp_path):
    ep = trio.episodes[0]
    assert [(a.agent, a.turn, a.tool_status) for a in ep.actions] == [
        ("engineer", 0, "ok"), ("engineer", 1, None), ("modeler", 0, "ok"), ("modeler", 1, None),
        ("analyst", 0, "ok"), ("analyst", 1, None)], [a.tool_output for a in ep.actions]
    for agent in DATA:
        assert set(agent.writes) <= set(ep.final_action(agent.name).files_after)
    assert ep.correct and ep.outcome["success"] and ep.outcome["reason"] == ""
    base = constant_submission(tmp_path, ep.task)  # a constant probability: ROC AUC 0.5
    assert ep.outcome["score"] == ep.outcome["roc_auc"] > base["roc_auc"] + 0.2  # probabilities were read
    assert ep.outcome["accuracy"] > base["accuracy"] + 0.1  # and the string labels


def test_each_agent_sees_the_task_the_files_and_its_teammates_outputs(trio):
    ep = trio.episodes[0]
    engineer = by_agent(ep, "engineer", 0).messages[1]["content"]
    assert ep.task.description in engineer
    assert "train.csv (" in engineer and "KB)" in engineer and "X_train.pkl" not in engineer
    modeler = by_agent(ep, "modeler", 0).messages[1]["content"]
    assert "X_train.pkl (" in modeler and "preprocess.pkl (" in modeler
    assert DONE in modeler and "features (" in modeler  # the engineer's last message and code output
    analyst = by_agent(ep, "analyst", 0).messages[1]["content"]
    assert "model.pkl (" in analyst and "cross-validation score" in analyst and "features (" in analyst
    tool_turn = by_agent(ep, "engineer", 1).messages[-1]
    assert tool_turn["role"] == "tool" and "[Files in the workspace:" in tool_turn["content"]
    assert "X_test.pkl (" in tool_turn["content"]
    assert set(ep.start_files) == {"train.csv", "test.csv"}  # the answers never enter the workspace


def test_forgetful_engineer_fails_and_the_coach_sees_who_forgot(trio):
    ep = trio.episodes[1]
    assert not ep.correct and ep.outcome["reason"] == "submission.csv not found"
    analyst = by_agent(ep, "analyst", 0)
    assert analyst.tool_status == "error"
    assert "FileNotFoundError" in analyst.tool_output and "X_test.pkl" in analyst.tool_output
    coach = LLMCoach(trio.model, trio.tokenizer, DATA)
    prompt = coach.prompt(ep, analyst)[1]["content"]
    assert "FileNotFoundError" in prompt  # the tool output
    assert "Data Engineer must write X_train.pkl, y_train.pkl, X_test.pkl: MISSING X_test.pkl (never written)" in prompt
    assert "Modeler must write model.pkl: all present" in prompt
    assert "after Data Engineer action 1 (code: ok): new files X_train.pkl (" in prompt
    assert "after Analyst action 1 (code: error): new files none" in prompt
    assert "Grader verdict on the submission: invalid (submission.csv not found)" in prompt  # final agent
    engineer_prompt = coach.prompt(ep, by_agent(ep, "engineer", 1))[1]["content"]
    assert "MISSING X_test.pkl" in engineer_prompt and "Modeler must" not in engineer_prompt
    perfect = coach.prompt(trio.episodes[0], by_agent(trio.episodes[0], "analyst", 1))[1]["content"]
    assert "MISSING" not in perfect and perfect.count("all present") == 3
    assert "Grader verdict on the submission: valid; " in perfect and "roc_auc = " in perfect
    # the logit coach reads such a prompt end to end (as in a run): an expected score
    [score] = LLMCoach(trio.model, trio.tokenizer, DATA, mode="logit").score([(ep, analyst)])
    assert 0 <= score <= 10


# ---------------------------------------------------------------- pure helpers
def test_workspace_files_listing_and_removal():
    task = tabular.builtin_tabular("eval", 1)[0]
    folder = workspace.new_workspace(task)
    ep = Episode(task, task.description, workdir=folder)
    (Path(folder) / "sub").mkdir()
    (Path(folder) / "sub" / "model.pkl").write_bytes(b"x" * 2048)
    (Path(folder) / ".hidden").write_text("x")
    (Path(folder) / "tiny.txt").write_text("abc")
    files = workspace.workspace_files(folder)
    assert list(files) == ["sub/model.pkl", "test.csv", "tiny.txt", "train.csv"]
    assert files["sub/model.pkl"] == 2048 and files["tiny.txt"] == 3
    text = workspace.describe_files(files)
    assert text.startswith("sub/model.pkl (2.0 KB), test.csv (") and "tiny.txt (3 B)" in text
    assert workspace.describe_files({}) == "(none)" and workspace.format_size(3 * 1024 ** 2) == "3.0 MB"
    workspace.remove_workspaces([ep, Episode(task, "no workspace")])
    assert not Path(folder).exists() and workspace.workspace_files(folder) == {}


def _ep(kind, metric, **outcome):
    task = SimpleNamespace(id=f"{kind}-{metric}-{len(outcome)}", kind=kind, metric=metric)
    return Episode(task, "", workdir="/nowhere", outcome={"success": True, **outcome} if outcome
                   else submission._fail("submission.csv not found"), correct=bool(outcome))


def test_outcome_summary_pools_kinds_and_counts_failures_as_worst():
    episodes = [_ep("binary", "roc_auc", accuracy=0.8, f1=0.6, roc_auc=0.9),
                _ep("multiclass", "f1", accuracy=0.6, f1=0.5),
                _ep("binary", "roc_auc"),  # failed
                _ep("regression", "rmse", rmse=2.0, rmse_pct=10.0),
                _ep("regression", "rmse")]  # failed
    s = workspace.outcome_summary(episodes)
    assert s["success_rate"] == pytest.approx(3 / 5)
    assert s["accuracy"] == pytest.approx(0.7) and s["accuracy_fair"] == pytest.approx(1.4 / 3)
    assert s["f1"] == pytest.approx(0.55) and s["f1_fair"] == pytest.approx(1.1 / 3)
    assert s["roc_auc"] == pytest.approx(0.9) and s["roc_auc_fair"] == pytest.approx(0.7)  # (0.9 + 0.5) / 2
    assert s["rmse_pct"] == 10.0 and s["rmse_pct_fair"] == pytest.approx(55.0) and s["rmse"] == 2.0
    only_reg = workspace.outcome_summary(episodes[3:])
    assert set(only_reg) == {"success_rate", "rmse_pct", "rmse_pct_fair", "rmse"}
    ungraded = Episode(episodes[0].task, "", workdir="/nowhere")  # outcome {} counts as a failure
    assert workspace.outcome_summary([ungraded])["accuracy_fair"] == 0.0
    result = evaluation.summarize(episodes, DATA, k=1, task="data")
    assert result["summary"]["f1_fair"] == s["f1_fair"] and result["summary"]["avg@1"] == pytest.approx(0.6)
    assert result["tasks"][0]["outcomes"][0]["roc_auc"] == 0.9


# ---------------------------------------------------------------- the command lines
def test_data_task_trains_and_evaluates_from_the_command_line(tmp_path, capsys):
    """As the README says: bring a task folder, train the tiny preset 2 steps, evaluate the run."""
    for task in pick_tasks()[:2]:  # a classification and a regression task
        folder = tmp_path / "tasks" / task.id
        folder.mkdir(parents=True)
        (folder / "description.md").write_text(task.description)
        task.train.to_csv(folder / "train.csv", index=False)
        task.test.to_csv(folder / "test.csv", index=False)
        task.answers.to_csv(folder / "answers.csv", index=False)
        (folder / "task.json").write_text(json.dumps({"metric": task.metric, "target": task.target,
                                                      "id_col": task.id_col}))
    out = tmp_path / "run"
    proc = run("train.py", "--task", "data", "--preset", "tiny", "--steps", "2", "--problems-per-step", "2",
               "--samples-per-problem", "1", "--max-new-tokens", "16", "--data", str(tmp_path / "tasks"),
               "--eval-data", str(tmp_path / "tasks"), "--out-dir", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "step 2" in proc.stdout and "engineer" in proc.stdout and "analyst" in proc.stdout
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and metrics[0]["episode/count"] == 2
    assert metrics[0]["data/success_rate"] == 0.0  # noise writes no submission
    assert "modeler/tool_use" in metrics[0] and "data/accuracy_fair" in metrics[0]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples[0]["outcome"]["reason"] == "submission.csv not found"
    assert set(samples[0]["actions"][0]["files_after"]) == {"test.csv", "train.csv"}
    for agent in ("engineer", "modeler", "analyst"):
        assert (out / "adapters" / agent / "adapter_config.json").is_file()

    proc = run("eval.py", str(out), "--task", "data", "--k", "1", "--limit", "2", "--no-coach")
    assert proc.returncode == 0, proc.stderr[-2000:]
    for key in ("success_rate", "f1_fair", "rmse_pct_fair", "analyst/tool_use"):
        assert key in proc.stdout, key
    result = json.loads((out / "eval.json").read_text())
    assert result["summary"]["episodes"] == 2 and result["summary"]["success_rate"] == 0.0
    assert result["summary"]["rmse_pct_fair"] == 100.0 and result["summary"]["f1_fair"] == 0.0
    assert result["tasks"][0]["outcomes"][0]["reason"] == "submission.csv not found"

    with pytest.raises(SystemExit) as stop:  # eval.py RUN --task math: one line, exit code 2
        evaluation.main([str(out), "--task", "math"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "is a data run, not math" in err and len(err.strip().splitlines()) == 1
