"""The data task's episode plumbing: shared workspaces, what the agents are shown of them, and
the summary of graded episodes.

tasks/tabular.py makes tasks and tasks/submission.py grades one; this file is what the loop needs around that
(SPEC §2): one workspace folder per episode (train.csv and test.csv, never the answers), its file
listing with sizes for the agents' prompts and the coach's file trail, and the success rate and
metric means of a batch of episodes, plain and "fair". Light on purpose: rollout.py imports it,
and a math run should not pay for pandas or scikit-learn.
"""
import tempfile
from pathlib import Path

import sandbox


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


def workspace_files(folder: str | Path) -> dict[str, int]:
    """{relative path: size in bytes} of the files in a workspace, sorted by path.

    Hidden files and __pycache__ are left out: they are not the agents' artifacts."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    files = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if not any(s.startswith(".") or s == "__pycache__" for s in rel.parts) and p.is_file():
            files[rel.as_posix()] = p.stat().st_size
    return files


def format_size(size: int) -> str:
    """Bytes as people read them: 512 B, 12.3 KB, 1.2 MB."""
    return (f"{size} B" if size < 1024 else f"{size / 1024:.1f} KB" if size < 1024 ** 2
            else f"{size / 1024 ** 2:.1f} MB")


def describe_files(files: dict[str, int]) -> str:
    """A workspace listing for a prompt: "test.csv (8.2 KB), train.csv (40.1 KB)"; "(none)" if empty."""
    return ", ".join(f"{name} ({format_size(size)})" for name, size in files.items()) or "(none)"


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
