"""The data task's episode plumbing: shared workspaces, what the agents are shown of them, and
the summary of graded episodes.

tasks/tabular.py makes tasks and tasks/submission.py grades one; this file is what the loop needs around that
(SPEC §2): one workspace folder per episode (train.csv and test.csv, never the answers), its file
listing with sizes for the agents' prompts and the coach's file trail, and the success rate and
metric means of a batch of episodes, plain and "fair". Light on purpose: rollout.py imports it,
and a math run should not pay for pandas or scikit-learn.
"""
import os
import stat
import tempfile
import time
from pathlib import Path

import sandbox

MAX_ENTRIES = 200       # files listed per workspace (prompts, the coach's file trail)
LIST_BUDGET_S = 0.5     # seconds one listing may take, however many files an action made
MORE = "..."            # key of the count of entries a cut-short listing left out (no file has this name)


def new_workspace(task) -> str:
    """A fresh temporary folder holding the task's train.csv and test.csv; returns its path."""
    from tasks import tabular
    folder = tempfile.mkdtemp(prefix="mappa-ws-")
    tabular.write_workspace(task, Path(folder))
    return folder


def remove_workspaces(episodes) -> None:
    """Delete the workspace of every episode that has one (after grading and the coach)."""
    for ep in episodes:
        if ep.workdir:
            sandbox.remove_folder(ep.workdir)


def workspace_files(folder: str | Path, max_entries: int = MAX_ENTRIES, budget_s: float = LIST_BUDGET_S) -> dict[str, int]:
    """{relative path: size in bytes} of the regular files in a workspace, sorted by path.

    Hidden files and __pycache__ are left out: they are not the agents' artifacts. Links are
    neither followed nor listed. An action can make a million files: the walk stops after
    max_entries directory entries or budget_s seconds, and the listing then ends with the key
    MORE (its value: how many entries were left out, -1 when the walk was cut short unknown)."""
    folder, files, seen = str(folder), {}, 0
    if not os.path.isdir(folder):
        return {}
    stop = time.monotonic() + budget_s
    for root, dirs, names in os.walk(folder):  # followlinks=False: a linked folder is not entered
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(names):
            if name.startswith("."):
                continue
            seen += 1
            if len(files) >= max_entries or time.monotonic() > stop:
                return {**dict(sorted(files.items())), MORE: _count_rest(folder, seen, stop)}
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                files[os.path.relpath(os.path.join(root, name), folder).replace(os.sep, "/")] = st.st_size
    return dict(sorted(files.items()))


def _count_rest(folder: str, seen: int, stop: float) -> int:
    """How many entries a cut-short walk left out, if counting them fits the time left; else -1."""
    total = 0
    for _, _, names in os.walk(folder):
        total += len(names)
        if time.monotonic() > stop + 0.5:
            return -1
    return max(0, total - seen + 1)


def format_size(size: int) -> str:
    """Bytes as people read them: 512 B, 12.3 KB, 1.2 MB."""
    return (f"{size} B" if size < 1024 else f"{size / 1024:.1f} KB" if size < 1024 ** 2
            else f"{size / 1024 ** 2:.1f} MB")


def describe_files(files: dict[str, int]) -> str:
    """A workspace listing for a prompt: "test.csv (8.2 KB), train.csv (40.1 KB)"; "(none)" if
    empty; a cut-short listing ends with "... N more" (see workspace_files)."""
    more = files.get(MORE)
    text = ", ".join(f"{name} ({format_size(size)})" for name, size in files.items() if name != MORE) or "(none)"
    return text if more is None else text + (f", ... {more} more" if more >= 0 else ", ... more (not counted)")


# Names of the metric means in a summary, per group of episodes (see outcome_summary).
GROUPS = {"classification": ("multiclass", ["accuracy", "f1"]),
          "roc_auc": ("binary", ["roc_auc"]),
          "regression": ("regression", ["rmse_pct"])}


def outcome_summary(episodes) -> dict:
    """Success rate and metric means of graded data episodes, plain and fair.

    episodes: objects with .task (.kind, .metric) and .outcome (submission.score_submission's dict;
    {} = not graded, a failure). Returns a flat dict of floats (None where no episode applies):
      success_rate                  valid submissions / episodes
      accuracy, f1                  mean over the valid submissions of classification tasks
                                    (F1 of the positive class for binary, weighted for multiclass)
      roc_auc                       the same over tasks whose metric is ROC AUC
      rmse_pct, rmse                the same over regression tasks (RMSE as % of the target range)
      <metric>_fair                 the mean over ALL episodes of the group, a failure counting as
                                    the worst value (submission.WORST: F1 0, RMSE% 100, AUC 0.5), so
                                    a method cannot look good by failing often
    Groups without episodes leave their keys out.
    """
    from tasks import submission
    outcomes = [(ep.task, ep.outcome or {"success": False}) for ep in episodes]
    out = {"success_rate": (sum(bool(o.get("success")) for _, o in outcomes) / len(outcomes)
                            if outcomes else None)}
    members = {"classification": [o for t, o in outcomes if t.kind != "regression"],
               "roc_auc": [o for t, o in outcomes if t.metric == "roc_auc"],
               "regression": [o for t, o in outcomes if t.kind == "regression"]}
    for group, (kind, names) in GROUPS.items():
        if not members[group]:
            continue
        # "multiclass" names accuracy and f1 only: the classification group pools both kinds.
        agg = submission.fair_aggregate(members[group], kind)
        for name in names:
            out[name] = agg["success_only"][name]
            out[f"{name}_fair"] = agg["fair"][name]
        if group == "regression":
            out["rmse"] = agg["success_only"]["rmse"]
    return out
