"""The tasks the agents work on, and how an episode's outcome is graded.

    problems.py    math: the built-in arithmetic word problems, file/folder/Hub loaders
    formats.py     math: a published set's row shapes (GSM8K, MATH, MAWPS, SVAMP, AIME) -> gold answers
    grader.py      math: the last \\boxed{} of an action and exact answer equivalence
    tabular.py     data: generated tabular tasks and DSBench-like task folders
    submission.py  data: grading the analyst's submission.csv against the hidden answers
    workspace.py   data: one shared workspace folder per episode, its listing, the outcome summary

`load_tasks` is the one entry point the loop and eval use.
"""
from tasks.problems import DataError

__all__ = ["DataError", "load_tasks"]


def load_tasks(task: str, source: str, split: str, fields=None) -> list:
    """The tasks of `task` ("math" or "data") from `source` ("builtin", a file, a folder or a Hub
    name), `split` "train" or "eval"; `fields`: a tasks.formats.FieldSpec (--problem-field,
    --answer-field, --answer-format) for math sets. A math set comes back as a ProblemSet, whose
    `.summary` is the one line to print. Data tasks import pandas, so they load only when asked for."""
    if task == "data":
        from tasks import tabular
        return tabular.builtin_tabular(split) if source == "builtin" else tabular.load_task_folder(source)
    from tasks import problems
    return problems.load_problems(source, split, fields=fields)
