"""Tabular tasks for the data pipeline (Data Engineer -> Modeler -> Analyst): made or loaded.

A task is a train table (features + target + id), a test table (features + id) and hidden answers
(id + target). The agents see train.csv/test.csv in a workspace folder and must leave a
submission.csv there; tasks/submission.py grades it (SPEC.md section 2).

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

from tasks.problems import DataError, _read_text

KINDS = ("binary", "multiclass", "regression")
METRICS = {"binary": ("accuracy", "f1", "roc_auc"), "multiclass": ("accuracy", "f1"),
           "regression": ("rmse",)}


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
    classes = sorted({canon(v) for v in task.train[t]})
    if task.kind == "regression":
        metric, what = "RMSE (lower is better)", "the predicted value (a number)"
    elif task.metric == "roc_auc":
        metric = f"ROC AUC for {t} = {canon(task.pos_label)} (higher is better)"
        what = f"the probability (0 to 1) that {t} is {canon(task.pos_label)}"
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
def canon(v) -> str:
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
    meta_text = _read_text(meta_path)  # DataError if it is not UTF-8
    try:
        meta = json.loads(meta_text)
    except json.JSONDecodeError as e:
        raise DataError(f"{meta_path}: invalid JSON at line {e.lineno}: {e.msg}") from None
    except ValueError as e:  # an integer past Python's digit limit
        raise DataError(f"{meta_path}: {e}"[:200]) from None
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
    test_ids, ans_ids = test[id_col].map(canon), answers[id_col].map(canon)
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
    labels = sorted({canon(v) for v in pd.concat([train[target], answers[target]]).dropna()})
    pos_label = meta.get("pos_label", labels[-1]) if kind == "binary" else None
    if kind == "binary" and (len(labels) != 2 or canon(pos_label) not in labels):
        raise DataError(f"{meta_path}: a binary task needs 2 labels and pos_label among them; "
                        f"{target!r} has {labels[:5]}, pos_label {pos_label!r}")
    return TabularTask(folder.name, _read_text(desc).strip(), kind, metric, target, id_col,
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
