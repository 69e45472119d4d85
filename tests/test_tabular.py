"""Tests for tasks/tabular.py and tasks/submission.py: grading by hand-computed metrics, fair aggregation, the task generator
(determinism, variety, learnability), the workspace writer and the task-folder loader."""
import json
import math

import pandas as pd
import pytest

from tasks import submission as sb
from tasks import tabular as tb
from tasks.tabular import DataError, TabularTask


def _task(kind, y, ids=None, metric=None, pos_label=None, target="y", id_col="id"):
    """A hand-made task whose answers are y for ids (default 1..len(y))."""
    ids = list(range(1, len(y) + 1)) if ids is None else ids
    train = pd.DataFrame({id_col: [100, 101, 102, 103], "x": [0.1, 0.2, 0.3, 0.4],
                          target: (list(dict.fromkeys(y)) * 4)[:4]})
    answers = pd.DataFrame({id_col: ids, target: y})
    metric = metric or {"regression": "rmse"}.get(kind, "accuracy")
    return TabularTask("t", "d", kind, metric, target, id_col, train,
                       answers.drop(columns=[target]).assign(x=0.0), answers, pos_label)


def _submit(tmp_path, task, frame, name="submission.csv"):
    path = tmp_path / name
    pd.DataFrame(frame).to_csv(path, index=False)
    return sb.score_submission(task, path)


# ---------------------------------------------------------------- scoring
def test_binary_metrics_by_hand(tmp_path):
    task = _task("binary", [1, 0, 1, 1, 0], metric="f1", pos_label=1)
    perfect = _submit(tmp_path, task, {"id": [1, 2, 3, 4, 5], "y": [1, 0, 1, 1, 0]})
    assert perfect["success"] and perfect["reason"] == ""
    assert perfect["accuracy"] == 1.0 and perfect["f1"] == 1.0
    assert perfect["roc_auc"] is None and perfect["rmse"] is None  # hard labels are no ranking
    r = _submit(tmp_path, task, {"id": [1, 2, 3, 4, 5], "y": [1, 1, 0, 1, 0]})
    # TP = 2 (ids 1, 4), FP = 1 (id 2), FN = 1 (id 3): precision = recall = 2/3
    assert r["accuracy"] == pytest.approx(3 / 5)
    assert r["f1"] == pytest.approx(2 / 3) and r["score"] == r["f1"]


def test_rows_are_matched_by_id_not_order(tmp_path):
    task = _task("binary", [1, 0, 1, 1, 0], pos_label=1)
    # Correct for every id, but listed in reverse: positional matching would get 1/5 right.
    r = _submit(tmp_path, task, {"id": [5, 4, 3, 2, 1], "y": [0, 1, 1, 0, 1]})
    assert r["success"] and r["accuracy"] == 1.0
    # Ids read back as floats or text still match ("3.0" == 3).
    r = _submit(tmp_path, task, {"id": [1.0, 2.0, 3.0, 4.0, 5.0], "y": [1.0, 0.0, 1.0, 1.0, 1.0]})
    assert r["success"] and r["accuracy"] == pytest.approx(4 / 5)


def test_stray_index_column_and_other_prediction_name(tmp_path):
    task = _task("binary", [1, 0, 1, 1, 0], pos_label=1)
    frame = pd.DataFrame({"id": [1, 2, 3, 4, 5], "prediction": [1, 0, 0, 1, 0]})
    frame.to_csv(tmp_path / "submission.csv")  # index=True writes an "Unnamed: 0" column
    r = sb.score_submission(task, tmp_path / "submission.csv")
    assert r["success"] and r["accuracy"] == pytest.approx(4 / 5)


def test_string_labels_and_unknown_labels(tmp_path):
    task = _task("binary", ["yes", "no", "no", "yes"], metric="f1", pos_label="yes")
    r = _submit(tmp_path, task, {"id": [1, 2, 3, 4], "y": ["yes", "yes", "no", "no"]})
    # TP 1, FP 1, FN 1 -> F1 = 2*1 / (2*1 + 1 + 1) = 0.5
    assert r["success"] and r["accuracy"] == 0.5 and r["f1"] == pytest.approx(0.5)
    r = _submit(tmp_path, task, {"id": [1, 2, 3, 4], "y": ["Yes", "no", "no", "Yes"]})
    assert not r["success"] and "not among the classes" in r["reason"] and r["accuracy"] is None


def test_multiclass_weighted_f1_by_hand(tmp_path):
    task = _task("multiclass", ["a", "a", "b", "c"], metric="f1")
    r = _submit(tmp_path, task, {"id": [4, 3, 2, 1], "y": ["c", "b", "b", "a"]})
    # per class F1: a = 2/3 (P 1, R 1/2), b = 2/3 (P 1/2, R 1), c = 1; support weights 2, 1, 1
    assert r["accuracy"] == 0.75
    assert r["f1"] == pytest.approx((2 * 2 / 3 + 2 / 3 + 1) / 4) and r["score"] == r["f1"]
    assert r["roc_auc"] is None


def test_probabilities_give_roc_auc(tmp_path):
    task = _task("binary", [1, 0, 1, 0], metric="roc_auc", pos_label=1)
    r = _submit(tmp_path, task, {"id": [1, 2, 3, 4], "y": [0.9, 0.2, 0.4, 0.6]})
    # positive-negative pairs ranked right: (.9,.2) (.9,.6) (.4,.2) yes, (.4,.6) no -> 3/4
    assert r["success"] and r["roc_auc"] == pytest.approx(0.75) and r["score"] == r["roc_auc"]
    assert r["accuracy"] == 0.5  # labels from p >= 0.5: 1, 0, 0, 1
    # String labels: hard labels plus a probability column; or P(positive) as the prediction.
    task = _task("binary", ["yes", "no", "yes", "no"], metric="roc_auc", pos_label="yes")
    r = _submit(tmp_path, task, {"id": [1, 2, 3, 4], "y": ["yes", "no", "no", "yes"],
                                 "probability": [0.9, 0.2, 0.4, 0.6]})
    assert r["roc_auc"] == pytest.approx(0.75) and r["accuracy"] == 0.5
    r = _submit(tmp_path, task, {"id": [1, 2, 3, 4], "y": [0.1, 0.8, 0.3, 0.7]})  # P("yes")
    assert r["roc_auc"] == pytest.approx(0.0) and r["accuracy"] == 0.0  # every pair inverted
    r = _submit(tmp_path, task, {"id": [1, 2, 3, 4], "y": ["yes", "no", "no", "yes"],
                                 "probability": ["high", "low", "low", "high"]})
    assert not r["success"] and "probability" in r["reason"]


def test_regression_rmse_and_percent_by_hand(tmp_path):
    task = _task("regression", [10.0, 20.0, 30.0, 40.0])
    r = _submit(tmp_path, task, {"id": [4, 1, 2, 3], "y": [44, 12, 18, 30]})
    # errors 2, -2, 0, 4 -> MSE 24/4 = 6; the answers range 40 - 10 = 30
    assert r["success"] and r["rmse"] == pytest.approx(math.sqrt(6))
    assert r["rmse_pct"] == pytest.approx(100 * math.sqrt(6) / 30) and r["score"] == r["rmse"]
    assert r["accuracy"] is None and r["f1"] is None
    r = _submit(tmp_path, task, {"id": [1, 2, 3, 4], "y": [10, "twenty", 30, 40]})
    assert not r["success"] and "non-numeric" in r["reason"] and r["rmse"] is None


@pytest.mark.parametrize("frame, words", [
    ({"id": [1, 2, 3, 4], "y": [1, 0, 1, 0]}, ""),  # control: valid
    ({"ID_": [1, 2, 3, 4], "y": [1, 0, 1, 0]}, "id column"),
    ({"id": [1, 2, 3, 4], "a": [1, 0, 1, 0], "b": [1, 1, 1, 1]}, "prediction column"),
    ({"id": [1, 2, 3, 9], "y": [1, 0, 1, 0]}, "ids do not match"),
    ({"id": [1, 2, 3], "y": [1, 0, 1]}, "row count"),
    ({"id": [1, 2, 3, 4, 5], "y": [1, 0, 1, 0, 1]}, "row count"),
    ({"id": [1, 2, 3, 3], "y": [1, 0, 1, 1]}, "duplicated"),
    ({"id": [1, 2, 3, 4], "y": [1, None, 1, 0]}, "empty predictions"),
])
def test_invalid_submissions_fail_with_reason(tmp_path, frame, words):
    task = _task("binary", [1, 0, 1, 0], pos_label=1)
    r = _submit(tmp_path, task, frame)
    assert r["success"] == (words == "")
    assert words in r["reason"]
    assert (r["accuracy"] is None) == (words != "")


def test_broken_binary_task_is_a_data_error(tmp_path):
    task = _task("binary", [1, 0, 1, 0], pos_label="yes")  # pos_label is not a class
    pd.DataFrame({"id": [1, 2, 3, 4], "y": [1, 0, 1, 0]}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(DataError, match="pos_label"):
        sb.score_submission(task, tmp_path / "s.csv")


def test_missing_and_unparsable_files(tmp_path):
    task = _task("binary", [1, 0], pos_label=1)
    r = sb.score_submission(task, tmp_path / "submission.csv")
    assert not r["success"] and "not found" in r["reason"]
    for text in ["", "id,y\n1,0\n2,1,3,4\n"]:  # empty; a row with too many fields
        (tmp_path / "bad.csv").write_text(text)
        r = sb.score_submission(task, tmp_path / "bad.csv")
        assert not r["success"] and "parsable" in r["reason"] and "\n" not in r["reason"]


def test_fair_aggregate_counts_failures_as_worst():
    fail = sb._fail("submission.csv not found")
    cls = [{"success": True, "accuracy": 0.8, "f1": 0.6, "roc_auc": 0.9},
           {"success": True, "accuracy": 0.6, "f1": 0.4, "roc_auc": None}, fail]
    agg = sb.fair_aggregate(cls, "binary")
    assert agg["n"] == 3 and agg["n_success"] == 2 and agg["success_rate"] == pytest.approx(2 / 3)
    assert agg["fair"]["accuracy"] == pytest.approx(1.4 / 3)
    assert agg["fair"]["f1"] == pytest.approx(1.0 / 3)
    assert agg["fair"]["roc_auc"] == pytest.approx((0.9 + 0.5 + 0.5) / 3)
    assert agg["success_only"] == pytest.approx({"accuracy": 0.7, "f1": 0.5, "roc_auc": 0.9})
    reg = [{"success": True, "rmse": 2.0, "rmse_pct": 10.0},
           {"success": True, "rmse": 4.0, "rmse_pct": 30.0}, fail, fail]
    agg = sb.fair_aggregate(reg, "regression")
    assert agg["success_rate"] == 0.5 and agg["fair"] == pytest.approx({"rmse_pct": 60.0})
    assert agg["success_only"] == pytest.approx({"rmse_pct": 20.0, "rmse": 3.0})
    empty = sb.fair_aggregate([], "multiclass")
    assert empty["success_rate"] is None and empty["fair"] == {"accuracy": None, "f1": None}
    assert sb.fair_aggregate([fail], "multiclass")["success_only"]["accuracy"] is None
    with pytest.raises(ValueError):
        sb.fair_aggregate(cls, "classification")


# ---------------------------------------------------------------- generator
def _same(a, b):
    return (a.id == b.id and a.description == b.description and a.metric == b.metric
            and a.train.equals(b.train) and a.test.equals(b.test) and a.answers.equals(b.answers))


def test_generator_is_deterministic_and_splits_are_disjoint():
    a, b = tb.make_tabular_tasks(6, seed=3), tb.make_tabular_tasks(6, seed=3)
    assert all(_same(x, y) for x, y in zip(a, b))
    assert _same(tb.make_tabular_tasks(2, seed=3)[1], a[1])  # task i depends only on (seed, i)
    other = tb.make_tabular_tasks(6, seed=4)
    assert not any(x.train.equals(y.train) for x, y in zip(a, other))
    train, ev = tb.builtin_tabular("train"), tb.builtin_tabular("eval")
    assert len(train) == 60 and len(ev) == 15 and len(tb.builtin_tabular("eval", 4)) == 4
    assert not {t.id for t in train} & {t.id for t in ev}
    assert all(_same(x, y) for x, y in zip(ev, tb.builtin_tabular("eval")))
    with pytest.raises(DataError):
        tb.builtin_tabular("test")


def test_generator_variety_and_shape():
    tasks = tb.builtin_tabular("train")
    assert {t.kind for t in tasks} == {"binary", "multiclass", "regression"}
    assert {t.metric for t in tasks} == {"accuracy", "f1", "roc_auc", "rmse"}
    assert len({t.id_col for t in tasks}) >= 4 and "PassengerId" in {t.id_col for t in tasks}
    binary_labels = {tuple(sorted(map(str, t.answers[t.target].unique())))
                     for t in tasks if t.kind == "binary"}
    assert ("0", "1") in binary_labels and any(not l[0].isdigit() for l in binary_labels)
    assert not any(pd.api.types.is_numeric_dtype(t.train[t.target])
                   for t in tasks if t.kind == "multiclass")
    assert any(t.train.isna().any().any() for t in tasks)
    assert not all(t.train.isna().any().any() for t in tasks)
    assert all(t.test.drop(columns=[t.id_col]).select_dtypes(exclude="number").shape[1] >= 1
               for t in tasks)  # categorical string columns
    for t in tasks:
        assert t.target not in t.test.columns and t.id_col in t.test.columns
        assert 300 <= len(t.train) <= 600 and 90 <= len(t.test) <= 120
        assert t.test[t.id_col].tolist() == t.answers[t.id_col].tolist()
        assert t.train[t.id_col].is_unique and t.target in t.description
        assert t.id_col in t.description and "submission.csv" in t.description
        assert (t.pos_label is not None) == (t.kind == "binary")


def _pipeline_predictions(task):
    """Impute + scale/one-hot + a linear model; probabilities for roc_auc tasks."""
    from sklearn.compose import ColumnTransformer, make_column_selector
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    pre = ColumnTransformer([
        ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
         make_column_selector(dtype_include="number")),
        ("cat", make_pipeline(SimpleImputer(strategy="most_frequent"),
                              OneHotEncoder(handle_unknown="ignore")),
         make_column_selector(dtype_exclude="number"))])
    model = Ridge() if task.kind == "regression" else LogisticRegression(max_iter=1000)
    pipe = make_pipeline(pre, model).fit(task.train.drop(columns=[task.target, task.id_col]),
                                         task.train[task.target])
    X_test = task.test.drop(columns=[task.id_col])
    if task.metric == "roc_auc":
        return pipe.predict_proba(X_test)[:, list(pipe.classes_).index(task.pos_label)]
    return pipe.predict(X_test)


def test_generated_eval_tasks_are_learnable(tmp_path):
    for task in tb.builtin_tabular("eval"):
        y = task.train[task.target]
        constant = (y.mean() if task.kind == "regression" else 0.5 if task.metric == "roc_auc"
                    else y.mode()[0])
        base = _submit(tmp_path, task, {task.id_col: task.test[task.id_col], task.target:
                                        [constant] * len(task.test)})
        model = _submit(tmp_path, task, {task.id_col: task.test[task.id_col],
                                         task.target: _pipeline_predictions(task)})
        assert base["success"] and model["success"], (task.id, base["reason"], model["reason"])
        if task.kind == "regression":
            assert model["rmse_pct"] < 0.9 * base["rmse_pct"], task.id
        else:
            assert model["score"] > base["score"] + 0.1, task.id


# ---------------------------------------------------------------- workspace and folders
def test_write_workspace_writes_no_answers(tmp_path):
    task = tb.builtin_tabular("eval", 3)[1]
    tb.write_workspace(task, tmp_path / "ws")
    assert sorted(p.name for p in (tmp_path / "ws").iterdir()) == ["test.csv", "train.csv"]
    test = pd.read_csv(tmp_path / "ws" / "test.csv")
    assert task.target not in test.columns and len(test) == len(task.answers)
    assert len(pd.read_csv(tmp_path / "ws" / "train.csv")) == len(task.train)


def _write_folder(task, folder, drop_kind=True):
    """A DSBench-like task folder, written by hand to pin the documented layout."""
    folder.mkdir(parents=True)
    (folder / "description.md").write_text(task.description)
    task.train.to_csv(folder / "train.csv", index=False)
    task.test.to_csv(folder / "test.csv", index=False)
    task.answers.to_csv(folder / "answers.csv", index=False)
    meta = {"metric": task.metric, "target": task.target, "id_col": task.id_col}
    if not drop_kind:
        meta["kind"] = task.kind
    (folder / "task.json").write_text(json.dumps(meta))


def test_folder_round_trip(tmp_path):
    tasks = {}  # one task per theme and label style
    for t in tb.builtin_tabular("train"):
        tasks.setdefault((t.target, str(t.pos_label)), t)
    tasks = list(tasks.values())
    assert len(tasks) >= 12
    for t in tasks:
        _write_folder(t, tmp_path / "root" / t.id)
    loaded = tb.load_task_folder(tmp_path / "root")
    assert [t.id for t in loaded] == [t.id for t in tasks]
    for orig, got in zip(tasks, loaded):
        assert (got.kind, got.metric, got.target, got.id_col) == (
            orig.kind, orig.metric, orig.target, orig.id_col)  # kind inferred from the target
        assert str(got.pos_label) == str(orig.pos_label) and got.description == orig.description
        pd.testing.assert_frame_equal(got.train, orig.train, check_dtype=False)
        pd.testing.assert_frame_equal(got.answers, orig.answers, check_dtype=False)
        r = _submit(tmp_path, got, orig.answers)
        assert r["success"] and (r["rmse"] == 0 if got.kind == "regression" else r["accuracy"] == 1)
    single = tb.load_task_folder(tmp_path / "root" / tasks[0].id)
    assert len(single) == 1 and single[0].id == tasks[0].id


def _break(folder, what):
    """Damage a good task folder in one way."""
    meta = json.loads((folder / "task.json").read_text())
    if what == "missing_file":
        (folder / "train.csv").unlink()
    elif what == "missing_json":
        (folder / "task.json").unlink()
    elif what == "bad_json":
        (folder / "task.json").write_text('{"metric": "accuracy",\n "target": }')
    elif what == "missing_description":
        (folder / "description.md").unlink()
    elif what in ("target_not_in_train", "unknown_metric", "metric_for_other_kind",
                  "target_not_text", "bad_pos_label"):
        meta.update({"target_not_in_train": {"target": "nope"}, "unknown_metric": {"metric": "mae"},
                     "metric_for_other_kind": {"metric": "rmse"}, "target_not_text": {"target": 5},
                     "bad_pos_label": {"pos_label": "maybe"}}[what])
        (folder / "task.json").write_text(json.dumps(meta))
    elif what == "no_rows":
        pd.read_csv(folder / "test.csv").iloc[:0].to_csv(folder / "test.csv", index=False)
    elif what == "id_missing":
        pd.read_csv(folder / "test.csv").drop(columns=[meta["id_col"]]).to_csv(
            folder / "test.csv", index=False)
    elif what == "answers_ids":
        ans = pd.read_csv(folder / "answers.csv")
        ans.loc[0, meta["id_col"]] = ans.loc[1, meta["id_col"]]  # one id twice, one missing
        ans.to_csv(folder / "answers.csv", index=False)
    elif what == "target_in_test":
        test = pd.read_csv(folder / "test.csv")
        test[meta["target"]] = pd.read_csv(folder / "answers.csv")[meta["target"]]
        test.to_csv(folder / "test.csv", index=False)


@pytest.mark.parametrize("what, words", [
    ("missing_file", "train.csv"), ("missing_json", "task.json"), ("bad_json", "line 2"),
    ("missing_description", "description"), ("target_not_in_train", "'nope' missing"),
    ("id_missing", "test.csv"), ("answers_ids", "answers.csv"), ("unknown_metric", "'mae'"),
    ("metric_for_other_kind", "'rmse'"), ("target_in_test", "contains the target"),
    ("target_not_text", "text keys"), ("bad_pos_label", "'maybe'"), ("no_rows", "data row"),
])
def test_bad_task_folders_raise_one_line_data_errors(tmp_path, what, words):
    task = tb.make_tabular_tasks(1, seed=5)[0]
    folder = tmp_path / "root" / "task_a"
    _write_folder(task, folder)
    assert len(tb.load_task_folder(tmp_path / "root")) == 1  # the folder is good before _break
    _break(folder, what)
    with pytest.raises(DataError) as err:
        tb.load_task_folder(tmp_path / "root")
    msg = str(err.value)
    assert words in msg and "task_a" in msg and "\n" not in msg


def test_empty_or_missing_root_folder(tmp_path):
    (tmp_path / "root").mkdir()
    with pytest.raises(DataError, match="empty"):
        tb.load_task_folder(tmp_path / "root")
    with pytest.raises(DataError, match="not found"):
        tb.load_task_folder(tmp_path / "missing")
    import tasks  # the project's one DataError: callers catch tasks.DataError
    assert DataError is tasks.DataError and issubclass(DataError, ValueError)
