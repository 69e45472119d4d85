"""Grading a data-task episode: is submission.csv valid, and how good is it (SPEC.md section 2).

`score_submission` matches the agents' submission.csv to the hidden answers by id and computes
accuracy, F1, ROC AUC (from probabilities only) or RMSE and RMSE as % of the target's range.
`fair_aggregate` averages over episodes with failures counted as the worst value, so a method
cannot look good by failing often. The math task's counterpart is tasks/grader.py.
"""
from __future__ import annotations

import errno
import io
import os
import stat
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, roc_auc_score

from tasks.tabular import KINDS, DataError, TabularTask, canon

# Worst values used by fair_aggregate for a failed episode (see its docstring for why).
WORST = {"accuracy": 0.0, "f1": 0.0, "roc_auc": 0.5, "rmse_pct": 100.0}
MAX_SUBMISSION_BYTES = 16 << 20  # a test split has ~100 rows; nothing legitimate comes near this


def _fail(reason: str) -> dict:
    return {"success": False, "reason": reason} | dict.fromkeys(
        ["score", "accuracy", "f1", "roc_auc", "rmse", "rmse_pct"])


def _probabilities(s: pd.Series) -> np.ndarray | None:
    """s as floats if it is numeric, complete and within [0, 1], else None."""
    if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s) or s.isna().any():
        return None
    p = s.to_numpy(dtype=float)
    return p if np.all((p >= 0) & (p <= 1)) else None


def read_untrusted(path: Path, max_bytes: int = MAX_SUBMISSION_BYTES) -> bytes | str:
    """The bytes of a file an action wrote, or the reason it is refused (a str). The last path
    component is never followed (O_NOFOLLOW), only a regular file is read (fstat after opening,
    O_NONBLOCK so a FIFO cannot hang the trainer) and at most max_bytes: a symlink to
    /proc/self/environ or a secret file yields its refusal, never its content (issue 15)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return f"{path.name} not found"
    except OSError as e:  # ELOOP: a symbolic link
        return f"{path.name} is not a regular file ({'a symbolic link' if e.errno == errno.ELOOP else e.strerror})"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return f"{path.name} is not a regular file"
        if st.st_size > max_bytes:
            return f"{path.name} is {st.st_size} bytes, over the {max_bytes}-byte cap"
        data, chunk = bytearray(), b"x"
        while chunk and len(data) <= max_bytes:  # a regular file: O_NONBLOCK does not apply
            chunk = os.read(fd, max_bytes + 1 - len(data))
            data += chunk
    finally:
        os.close(fd)
    return bytes(data) if len(data) <= max_bytes else f"{path.name} is over the {max_bytes}-byte cap"


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
    raw = read_untrusted(path)
    if isinstance(raw, str):
        return _fail(raw)
    try:
        sub = pd.read_csv(io.BytesIO(raw))
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
    ids = sub[idc].map(canon)
    if ids.duplicated().any():
        dup = ids[ids.duplicated()]
        return _fail(f"{len(dup)} duplicated ids in {idc!r}, e.g. {dup.iloc[0]}")
    if len(sub) != len(task.answers):
        return _fail(f"wrong row count: {len(sub)} rows, expected {len(task.answers)} "
                     f"(one per test id)")
    truth = task.answers.assign(_id=task.answers[idc].map(canon)).set_index("_id")[t]
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
    y = truth.map(canon).to_numpy()
    classes = sorted(set(y) | {canon(v) for v in task.train[t].dropna()})
    proba = None
    if task.kind == "binary":
        pos = canon(task.pos_label)
        if len(classes) != 2 or pos not in classes:  # a broken task, not a bad submission
            raise DataError(f"task {task.id}: binary needs 2 classes incl. pos_label {pos!r}, "
                            f"has {classes[:5]}")
        neg = next(c for c in classes if c != pos)
        as_p = _probabilities(pred)
        if as_p is not None and not set(pred.map(canon)) <= set(classes):
            # numbers in [0, 1] that are not the labels themselves: read them as P(positive)
            pred = pd.Series(np.where(as_p >= 0.5, pos, neg))
            proba = None if set(np.unique(as_p)) <= {0.0, 1.0} else as_p
        if prob_cols and pred_col not in prob_cols:
            proba = _probabilities(sub[prob_cols[0]])
            if proba is None:
                return _fail(f"probability column {prob_cols[0]!r} must be numbers in [0, 1]")
    labels = pred.map(canon).to_numpy()
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
