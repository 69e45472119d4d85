"""Tabular tasks for the data pipeline (Data Engineer -> Modeler -> Analyst) and their grading.

A task is a train table (features + target + id), a test table (features + id) and hidden answers
(id + target). The agents see train.csv/test.csv in a workspace folder and must leave a
submission.csv there; `score_submission` checks it and computes the metrics (SPEC.md section 2).

Sources of tasks:
- `make_tabular_tasks(n, seed)`: generated, seeded tasks (binary with 0/1 or string labels,
  multiclass with string labels, regression). The target is a known function of some features
  plus noise, so a sensible pipeline clearly beats a constant baseline.
- `builtin_tabular(split)`: fixed, disjoint "train" and "eval" splits of generated tasks.
- `load_task_folder(path)`: a DSBench-like folder. Layout::

      root/                      # or a single task folder (one holding task.json)
        <task_id>/               # one subfolder per task, loaded in sorted order
          description.md         # (or description.txt) task text shown to the agents
          train.csv              # id column + features + target
          test.csv               # id column + features, no target
          answers.csv            # id column + target, one row per test.csv row
          task.json              # {"metric": "accuracy"|"f1"|"roc_auc"|"rmse", "target": "...",
                                 #  "id_col": "...", "kind": optional "binary"|"multiclass"|
                                 #  "regression" (inferred from the target if absent),
                                 #  "pos_label": optional positive class for binary f1/roc_auc}

Labels and ids are compared as text after light normalisation (1.0 == 1, " yes" == "yes"), so
CSV round trips do not change results. The positive class of a binary task defaults to the last
of its sorted labels: 1 of 0/1, "yes" of no/yes, "True" of False/True.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, roc_auc_score

try:
    from tasks import DataError
except ModuleNotFoundError as e:  # only if tasks.py is absent; a circular import must fail loudly
    if e.name != "tasks":
        raise

    class DataError(ValueError):
        """Bad task data (file, field or value); the message says what and where."""

KINDS = ("binary", "multiclass", "regression")
METRICS = {"binary": ("accuracy", "f1", "roc_auc"), "multiclass": ("accuracy", "f1"),
           "regression": ("rmse",)}
# Worst values used by fair_aggregate for a failed episode (see its docstring for why).
WORST = {"accuracy": 0.0, "f1": 0.0, "roc_auc": 0.5, "rmse_pct": 100.0}


@dataclass(eq=False)  # eq=False: comparing DataFrames with == is ambiguous
class TabularTask:
    id: str
    description: str
    kind: str
    metric: str
    target: str
    id_col: str
    train: pd.DataFrame
    test: pd.DataFrame
    answers: pd.DataFrame
    pos_label: object = None  # binary only: the class that f1 and roc_auc treat as positive


# ---------------------------------------------------------------- generator
# Each theme: (kind, goal text, id_col, id prefix ("" = integer ids), target, label sets (binary
# tasks alternate them), regression (base, scale), informative numeric features (name, median,
# spread: value = median * exp(spread * z)), informative categoricals (name, levels)).
THEMES = [
    ("binary", "Predict whether a telecom customer cancels their contract", "customer_id", "C",
     "churned", [("no", "yes"), (0, 1)], None, [("tenure_months", 20, 0.8),
     ("monthly_charges", 65, 0.4), ("support_calls", 2, 0.7), ("data_usage_gb", 12, 0.6)],
     [("contract", ["monthly", "one_year", "two_year"]), ("payment", ["card", "bank", "check"])]),
    ("binary", "Predict which passengers survived the voyage", "PassengerId", "", "Survived",
     [(0, 1), ("no", "yes")], None, [("Age", 30, 0.5), ("Fare", 25, 0.9), ("SibSp", 1, 0.6)],
     [("Pclass", [1, 2, 3]), ("Sex", ["male", "female"]), ("Embarked", ["S", "C", "Q"])]),
    ("binary", "Predict whether a loan applicant will default", "loan_id", "L", "default",
     [(0, 1), ("N", "Y")], None, [("income_k", 55, 0.5), ("loan_amount_k", 15, 0.6),
     ("credit_score", 680, 0.1), ("debt_ratio", 0.3, 0.5)],
     [("purpose", ["car", "home", "education", "business"]), ("employment", ["salaried", "self"])]),
    ("multiclass", "Classify the species of a flower from its measurements", "id", "", "species",
     [("setosa", "versicolor", "virginica")], None, [("sepal_length", 5.8, 0.15),
     ("sepal_width", 3.0, 0.15), ("petal_length", 3.8, 0.4), ("petal_width", 1.2, 0.5)],
     [("garden", ["north", "south", "east"])]),
    ("multiclass", "Classify the quality grade of a wine from lab measurements", "wine_id", "W",
     "quality", [("low", "medium", "high")], None, [("alcohol", 10.5, 0.1), ("acidity", 7.5, 0.2),
     ("sulphates", 0.65, 0.25), ("residual_sugar", 2.5, 0.5)], [("color", ["red", "white"])]),
    ("multiclass", "Predict the vehicle type from sensor readings", "Id", "", "vehicle",
     [("bus", "car", "truck", "van")], None, [("length_m", 5, 0.4), ("weight_t", 2, 0.7),
     ("axles", 2, 0.3), ("speed_kmh", 70, 0.25)], [("lane", ["left", "middle", "right"])]),
    ("regression", "Predict the sale price of a house", "Id", "", "SalePrice", [], (180000, 40000),
     [("living_area_sqft", 1500, 0.35), ("lot_area_sqft", 9000, 0.4), ("year_built", 1975, 0.006),
      ("bedrooms", 3, 0.3)],
     [("neighborhood", ["Oak", "Elm", "Pine", "Cedar"]), ("garage", ["none", "single", "double"])]),
    ("regression", "Predict the number of bikes rented in an hour", "instant", "", "count", [],
     (190, 45), [("temperature_c", 18, 0.4), ("humidity", 60, 0.25), ("wind_speed", 12, 0.5)],
     [("season", ["winter", "spring", "summer", "fall"]), ("weather", ["clear", "mist", "rain"])]),
    ("regression", "Predict a customer's yearly insurance charges", "policy_id", "P", "charges",
     [], (13000, 3000), [("age", 40, 0.3), ("bmi", 29, 0.15), ("children", 1, 0.6)],
     [("smoker", ["no", "yes"]), ("region", ["ne", "nw", "se", "sw"])]),
]
JUNK = ["record_batch", "form_version", "clerk_code", "weekday"]  # irrelevant column names
COUNTS = {"support_calls", "SibSp", "axles", "bedrooms", "children", "count"}  # whole numbers
DIFFICULTY = {"easy": (0.25, 0.0), "medium": (0.5, 0.05), "hard": (0.7, 0.12)}  # noise, NaN frac


def _rounded(x: np.ndarray, whole: bool) -> np.ndarray:
    """x as integers when whole (counts, prices), else to 2 decimals."""
    return np.round(x).astype(np.int64) if whole else np.round(x, 2)


def _make_task(seed: int, i: int) -> TabularTask:
    """Generate task i of a seeded set; depends only on (seed, i), so sets are prefix-stable."""
    rng = np.random.default_rng([seed, i])
    kind = KINDS[i % 3]  # every 3 consecutive tasks cover all kinds
    themes = [t for t in THEMES if t[0] == kind]
    (_, text, id_col, id_prefix, target, label_sets, reg_scale, num, cat) = themes[
        rng.integers(len(themes))]
    level = ["easy", "medium", "hard"][rng.integers(3)]
    noise_sd, nan_frac = DIFFICULTY[level]
    n_train, n_test = int(rng.integers(300, 601)), int(rng.integers(90, 121))
    n = n_train + n_test
    cols: dict[str, object] = {}
    latent = np.zeros(n)
    for j, (name, median, spread) in enumerate(num):
        z = rng.standard_normal(n)
        latent += rng.choice([-1, 1]) * rng.uniform(0.6, 1.4) * z
        if j == 0 and level != "easy":  # a mild non-linearity so trees and linear models differ
            latent += 0.4 * (z ** 2 - 1)
        values = _rounded(median * np.exp(spread * z), name in COUNTS or median >= 100)
        if nan_frac and j < 2:  # missing values in the first two informative columns
            values = np.where(rng.random(n) < nan_frac, np.nan, values)
        cols[name] = values
    for name, levels in cat:
        codes = rng.integers(len(levels), size=n)
        latent += rng.normal(0, 0.8, len(levels))[codes]
        cols[name] = np.array(levels)[codes]  # str or int levels (Titanic's Pclass is 1/2/3)
    for name in JUNK[: int(rng.integers(1, len(JUNK) + 1))]:  # irrelevant columns
        cols[name] = (rng.integers(0, 10, n) if rng.random() < 0.5
                      else np.array(list("ABCD"), dtype=object)[rng.integers(4, size=n)])
    latent = (latent - latent.mean()) / latent.std()
    noisy = latent + rng.normal(0, noise_sd, n)
    labels = label_sets[(i // 3) % len(label_sets)] if label_sets else ()  # alternate label styles
    pos_label = None
    if kind == "binary":
        pos_rate = rng.uniform(0.35, 0.5)
        y = np.where(noisy > np.quantile(noisy, 1 - pos_rate), labels[1], labels[0])
        pos_label = labels[1]
        metric = ("accuracy", "f1", "roc_auc")[(i // 3) % 3]
    elif kind == "multiclass":
        order = rng.permutation(len(labels))  # nominal labels: their order says nothing
        bins = np.quantile(noisy, np.linspace(0, 1, len(labels) + 1)[1:-1])
        y = np.array(labels, dtype=object)[order][np.searchsorted(bins, noisy)]
        metric = ("accuracy", "f1")[(i // 3) % 2]
    else:
        y = _rounded(reg_scale[0] + reg_scale[1] * noisy, target in COUNTS or reg_scale[0] >= 1e5)
        metric = "rmse"
    ids = np.arange(1, n + 1) + int(rng.integers(0, 5)) * 1000
    ids = [f"{id_prefix}{v:05d}" for v in ids] if id_prefix else ids
    features = list(cols)
    rng.shuffle(features)
    frame = pd.DataFrame({id_col: ids, **{c: cols[c] for c in features}, target: y})
    train = frame.iloc[:n_train].reset_index(drop=True)
    test = frame.iloc[n_train:].drop(columns=[target]).reset_index(drop=True)
    answers = frame.iloc[n_train:][[id_col, target]].reset_index(drop=True)
    task = TabularTask(f"tab{seed}-{i:03d}", "", kind, metric, target, id_col, train, test,
                       answers, pos_label)
    task.description = describe_task(task, text)
    return task


def describe_task(task: TabularTask, goal: str) -> str:
    """Short task text for the agents: goal, target, id column, metric, files, what to submit."""
    t, idc = task.target, task.id_col
    classes = sorted({_canon(v) for v in task.train[t]})
    if task.kind == "regression":
        metric, what = "RMSE (lower is better)", "the predicted value (a number)"
    elif task.metric == "roc_auc":
        metric = f"ROC AUC for {t} = {_canon(task.pos_label)} (higher is better)"
        what = f"the probability (0 to 1) that {t} is {_canon(task.pos_label)}"
    else:
        metric = ("accuracy" if task.metric == "accuracy" else "weighted F1"
                  if task.kind == "multiclass" else f"F1 of the positive class {task.pos_label}")
        metric += " (higher is better)"
        what = "the predicted label, one of: " + ", ".join(classes)
    return (f"{goal}. Target column: `{t}`. Id column: `{idc}`.\n"
            f"Files: train.csv ({len(task.train)} rows: {idc}, features, {t}); "
            f"test.csv ({len(task.test)} rows: {idc} and the same features, no {t}).\n"
            f"Metric: {metric}.\n"
            f"Submit submission.csv with columns `{idc}` and `{t}`, one row per test.csv row; "
            f"`{t}` is {what}.")


def make_tabular_tasks(n: int, seed: int) -> list[TabularTask]:
    """n seeded tasks cycling binary, multiclass, regression; same (n, seed) -> same tasks."""
    return [_make_task(seed, i) for i in range(n)]


def builtin_tabular(split: str, n: int | None = None) -> list[TabularTask]:
    """Fixed splits: "train" (default 60 tasks, seed 1) and "eval" (default 15, seed 2).

    Different seeds give different ids (tab1-*, tab2-*) and independent data, so they are disjoint.
    """
    sizes = {"train": (60, 1), "eval": (15, 2)}
    if split not in sizes:
        raise DataError(f"unknown tabular split {split!r}: use 'train' or 'eval'")
    default_n, seed = sizes[split]
    return make_tabular_tasks(default_n if n is None else n, seed)


# ---------------------------------------------------------------- folders
def _canon(v) -> str:
    """Label/id as comparable text: 1.0 -> '1', True -> 'True', ' yes ' -> 'yes'."""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, float, np.integer, np.floating)) and float(v).is_integer():
        return str(int(v))
    return str(v).strip()


def infer_kind(target: pd.Series) -> str:
    """'regression' for non-integer or many-valued numbers, else 'binary'/'multiclass' by count."""
    values = target.dropna()
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    if numeric and (values.nunique() > 20 or not np.all(np.mod(values, 1) == 0)):
        return "regression"
    return "binary" if values.nunique() <= 2 else "multiclass"


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file missing (a task folder needs train.csv, test.csv, "
                        f"answers.csv, task.json, description.md)")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot parse CSV: {str(e).splitlines()[0]}") from None


def _load_one(folder: Path) -> TabularTask:
    """Load and check one task folder (layout in the module docstring)."""
    meta_path = folder / "task.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: file missing (needs metric, target, id_col)")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{meta_path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(meta, dict) or any(not isinstance(meta.get(k), str)
                                         for k in ("metric", "target", "id_col")):
        raise DataError(f"{meta_path}: must be an object with text keys metric, target, id_col")
    metric, target, id_col = meta["metric"], meta["target"], meta["id_col"]
    desc = next((p for p in (folder / "description.md", folder / "description.txt")
                 if p.is_file()), None)
    if desc is None:
        raise DataError(f"{folder}: description.md (or description.txt) missing")
    train, test, answers = (_read_csv(folder / f) for f in ("train.csv", "test.csv", "answers.csv"))
    for name, frame, cols in (("train.csv", train, (id_col, target)), ("test.csv", test, (id_col,)),
                              ("answers.csv", answers, (id_col, target))):
        for col in cols:
            if col not in frame.columns:
                raise DataError(f"{folder / name}: column {col!r} missing "
                                f"(task.json names it; columns are {list(frame.columns)[:8]})")
    if train.empty or test.empty:
        raise DataError(f"{folder}: train.csv and test.csv need at least one data row each")
    if target in test.columns:
        raise DataError(f"{folder / 'test.csv'}: contains the target {target!r}; move it to "
                        f"answers.csv")
    test_ids, ans_ids = test[id_col].map(_canon), answers[id_col].map(_canon)
    if not test_ids.is_unique or len(ans_ids) != len(test_ids) or set(test_ids) != set(ans_ids):
        raise DataError(f"{folder / 'answers.csv'}: ids must match test.csv ids one to one "
                        f"({len(ans_ids)} answers, {len(test_ids)} test rows, "
                        f"{len(set(test_ids) ^ set(ans_ids))} ids in only one of them)")
    kind = meta.get("kind") or infer_kind(pd.concat([train[target], answers[target]]))
    if kind not in KINDS:
        raise DataError(f"{meta_path}: unknown kind {kind!r}; use one of {list(KINDS)}")
    if metric not in METRICS[kind]:
        raise DataError(f"{meta_path}: metric {metric!r} is unknown or does not fit a {kind} "
                        f"task; use one of {list(METRICS[kind])}")
    if answers[target].isna().any():
        raise DataError(f"{folder / 'answers.csv'}: {int(answers[target].isna().sum())} empty "
                        f"values in {target!r}; every test id needs an answer")
    labels = sorted({_canon(v) for v in pd.concat([train[target], answers[target]]).dropna()})
    pos_label = meta.get("pos_label", labels[-1]) if kind == "binary" else None
    if kind == "binary" and (len(labels) != 2 or _canon(pos_label) not in labels):
        raise DataError(f"{meta_path}: a binary task needs 2 labels and pos_label among them; "
                        f"{target!r} has {labels[:5]}, pos_label {pos_label!r}")
    return TabularTask(folder.name, desc.read_text().strip(), kind, metric, target, id_col,
                       train, test, answers[[id_col, target]], pos_label)


def load_task_folder(path: str | Path) -> list[TabularTask]:
    """All tasks under a root folder (one subfolder each), or the single task folder `path`."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: task folder not found")
    if (root / "task.json").is_file():
        return [_load_one(root)]
    subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))
    if not subs:
        raise DataError(f"{root}: empty, expected one subfolder per task with task.json, "
                        f"train.csv, test.csv, answers.csv, description.md")
    return [_load_one(p) for p in subs]


def write_workspace(task: TabularTask, folder: Path) -> None:
    """Write train.csv and test.csv (never the answers) into the episode's workspace folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    task.train.to_csv(folder / "train.csv", index=False)
    task.test.to_csv(folder / "test.csv", index=False)


# ---------------------------------------------------------------- grading
def _fail(reason: str) -> dict:
    return {"success": False, "reason": reason} | dict.fromkeys(
        ["score", "accuracy", "f1", "roc_auc", "rmse", "rmse_pct"])


def _probabilities(s: pd.Series) -> np.ndarray | None:
    """s as floats if it is numeric, complete and within [0, 1], else None."""
    if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s) or s.isna().any():
        return None
    p = s.to_numpy(dtype=float)
    return p if np.all((p >= 0) & (p <= 1)) else None


def score_submission(task: TabularTask, path: Path) -> dict:
    """Check submission.csv against the hidden answers, matching rows by id.

    Returns {"success", "reason" ("" if valid), "score" (the task's metric), "accuracy", "f1",
    "roc_auc", "rmse", "rmse_pct"}; metrics that do not apply or cannot be computed are None.
    The prediction column is the one named like the target (any case), else the only column
    besides the id and probability columns. Binary tasks accept numeric predictions in [0, 1] as
    P(positive) (label = p >= 0.5), and an extra column whose name contains "prob"; roc_auc is
    only computed from such probabilities (hard 0/1 labels are not a ranking).
    """
    path = Path(path)
    if not path.is_file():
        return _fail(f"{path.name} not found")
    try:
        sub = pd.read_csv(path)
    except Exception as e:  # any parser failure means an invalid submission, not a crash
        first = (str(e).splitlines() or [type(e).__name__])[0]
        return _fail(f"{path.name} is not a parsable CSV: {first}")
    idc, t = task.id_col, task.target
    if idc not in sub.columns:
        return _fail(f"id column {idc!r} missing (columns: {list(sub.columns)[:8]})")
    prob_cols = [c for c in sub.columns if c != idc and "prob" in str(c).lower()]
    named = [c for c in sub.columns if str(c).lower() == t.lower()]
    others = [c for c in sub.columns if c != idc and c not in prob_cols
              and not str(c).startswith("Unnamed:")]  # a stray index from to_csv(index=True)
    if named or len(others) == 1:
        pred_col = (named or others)[0]
    elif not others and len(prob_cols) == 1:  # only P(positive) was given
        pred_col = prob_cols[0]
    else:
        return _fail(f"prediction column {t!r} missing (columns: {list(sub.columns)[:8]})")
    ids = sub[idc].map(_canon)
    if ids.duplicated().any():
        dup = ids[ids.duplicated()]
        return _fail(f"{len(dup)} duplicated ids in {idc!r}, e.g. {dup.iloc[0]}")
    if len(sub) != len(task.answers):
        return _fail(f"wrong row count: {len(sub)} rows, expected {len(task.answers)} "
                     f"(one per test id)")
    truth = task.answers.assign(_id=task.answers[idc].map(_canon)).set_index("_id")[t]
    unknown = sorted(set(ids) - set(truth.index))
    if unknown:
        return _fail(f"ids do not match test.csv: {len(unknown)} unknown, e.g. {unknown[0]}")
    sub = sub.set_index(ids).loc[truth.index]  # align to the answers by id, not by order
    pred = sub[pred_col]
    if pred.isna().any():
        return _fail(f"{int(pred.isna().sum())} empty predictions in {pred_col!r}")
    result = _fail("") | {"success": True}
    if task.kind == "regression":
        p = pd.to_numeric(pred, errors="coerce").to_numpy(dtype=float)
        if not np.all(np.isfinite(p)):
            return _fail(f"non-numeric predictions for regression in {pred_col!r}, "
                         f"e.g. {pred[~np.isfinite(p)].iloc[0]!r}")
        y = truth.to_numpy(dtype=float)
        rmse = float(np.sqrt(np.mean((p - y) ** 2)))
        span = float(y.max() - y.min())
        result.update(rmse=rmse, rmse_pct=100 * rmse / span if span > 0 else None, score=rmse)
        return result
    y = truth.map(_canon).to_numpy()
    classes = sorted(set(y) | {_canon(v) for v in task.train[t].dropna()})
    proba = None
    if task.kind == "binary":
        pos = _canon(task.pos_label)
        if len(classes) != 2 or pos not in classes:  # a broken task, not a bad submission
            raise DataError(f"task {task.id}: binary needs 2 classes incl. pos_label {pos!r}, "
                            f"has {classes[:5]}")
        neg = next(c for c in classes if c != pos)
        as_p = _probabilities(pred)
        if as_p is not None and not set(pred.map(_canon)) <= set(classes):
            # numbers in [0, 1] that are not the labels themselves: read them as P(positive)
            pred = pd.Series(np.where(as_p >= 0.5, pos, neg))
            proba = None if set(np.unique(as_p)) <= {0.0, 1.0} else as_p
        if prob_cols and pred_col not in prob_cols:
            proba = _probabilities(sub[prob_cols[0]])
            if proba is None:
                return _fail(f"probability column {prob_cols[0]!r} must be numbers in [0, 1]")
    labels = pred.map(_canon).to_numpy()
    bad = sorted(set(labels) - set(classes))
    if bad:
        return _fail(f"predictions {bad[:3]} are not among the classes {classes[:10]}")
    result["accuracy"] = float(np.mean(labels == y))
    if task.kind == "binary":
        result["f1"] = float(f1_score(y, labels, pos_label=pos, average="binary", zero_division=0))
        if proba is not None and len(set(y)) == 2:
            result["roc_auc"] = float(roc_auc_score(y == pos, proba))
    else:
        result["f1"] = float(f1_score(y, labels, average="weighted", zero_division=0))
    result["score"] = result[task.metric]
    return result


def fair_aggregate(results: list[dict], kind: str) -> dict:
    """Mean metrics over episodes with failures counted, and over successes only.

    Returns {"n", "n_success", "success_rate", "fair": {metric: mean}, "success_only": {...}}.
    "fair" counts a failed episode as the worst value: accuracy 0, F1 0, RMSE% 100 (an error as
    large as the whole target range), ROC AUC 0.5 (what a constant submission earns; below 0.5 is
    a ranking a valid submission only reaches by being systematically inverted). A success without
    probabilities has no AUC and also counts 0.5. Raw RMSE is not comparable across tasks, so it
    appears only in "success_only". Means over no values are None.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: use one of {list(KINDS)}")
    names = {"binary": ["accuracy", "f1", "roc_auc"], "multiclass": ["accuracy", "f1"],
             "regression": ["rmse_pct"]}[kind]
    ok = [r for r in results if r.get("success")]

    def mean(values):
        return float(np.mean(values)) if values else None

    fair = {m: mean([r[m] if r.get("success") and r.get(m) is not None else WORST[m]
                     for r in results]) for m in names}
    only = {m: mean([r[m] for r in ok if r.get(m) is not None])
            for m in names + (["rmse"] if kind == "regression" else [])}
    return {"n": len(results), "n_success": len(ok),
            "success_rate": len(ok) / len(results) if results else None,
            "fair": fair, "success_only": only}
