"""The math task's problems: a built-in generator of arithmetic word problems with a fixed
train/eval split, and loaders for JSON/JSONL/Parquet/CSV files, saved datasets and Hub datasets.

How a row becomes a problem and its gold answer (GSM8K, MATH, MAWPS, SVAMP, AIME shapes) is
tasks/formats.py; answers are graded in tasks/grader.py.
"""
from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass, replace

from tasks.formats import _TOO_LONG, DataError, FieldSpec, read_row, row_id, row_kind, summary_line

__all__ = ["DataError", "Problem", "ProblemSet", "load_problems", "builtin_problems", "make_arithmetic"]


@dataclass
class Problem:
    """One math problem. ``answer`` is the gold answer as a string; ``kind`` tags the task type
    (for per-type reports); ``steps`` is the generator's arithmetic, ``(("start", a), ("buy", k, m),
    ...)``, so the answer can be recomputed (empty for loaded problems)."""
    id: str
    problem: str
    answer: str
    kind: str = "arithmetic"
    steps: tuple = ()


# ----------------------------------------------------------------------------- generator
_NAMES = ["Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hiro", "Isla", "Jamal",
          "Kai", "Lena", "Mateo", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara",
          "Uma", "Victor", "Wen", "Yusuf", "Zoe"]
# (items, container, containers)
_OBJECTS = [("stickers", "pack", "packs"), ("marbles", "bag", "bags"), ("pencils", "box", "boxes"),
            ("cookies", "tray", "trays"), ("apples", "crate", "crates"), ("beads", "jar", "jars"),
            ("stamps", "sheet", "sheets"), ("eggs", "carton", "cartons"), ("books", "box", "boxes"),
            ("seeds", "packet", "packets"), ("buttons", "tin", "tins"), ("balloons", "bag", "bags"),
            ("crayons", "box", "boxes"), ("shells", "bucket", "buckets"), ("cards", "pack", "packs")]
_CONNECT = ["", "Then ", "Next, ", "After that, ", "Later, "]
_GIVERS = ["a neighbour", "a cousin", "the school fair", "an aunt", "a classmate"]
_START = ["{name} has {a} {items}.", "{name} starts the week with {a} {items}.",
          "There are {a} {items} in {name}'s collection.", "{name} collected {a} {items}."]
_TEXT = {
    "buy": ["{c}{name} buys {k} {cs} of {items}, each holding {m} {items}.",
            "{c}{name} gets {k} {cs} with {m} {items} in every {c1}."],
    "get": ["{c}{name} receives {b} more {items} from {giver}.", "{c}{name} finds {b} more {items}."],
    "give": ["{c}{name} gives {b} {items} to {friend}.", "{c}{name} loses {b} {items}.",
             "{c}{name} uses up {b} {items}."],
    "times": ["{c}{name} gets enough {items} to have {k} times as many as before.",
              "{c}{name}'s collection of {items} grows to {k} times its size."],
    "split": ["{c}{name} divides the {items} into {k} equal groups and keeps only one group.",
              "{c}{name} sorts the {items} equally into {k} {cs}, keeps one {c1} and gives the "
              "others away."],
    "share": ["{c}{name} shares all the {items} equally among {k} friends."],
}
_QUESTION = ["How many {items} does {name} have now?", "How many {items} does {name} end up with?",
             "How many {items} does {name} have at the end?"]
_CAP = 5000  # keeps answers readable; "times" is skipped when it would pass this


def _try_step(rng: random.Random, op: str, cur: int, big: bool, cap: int = _CAP) -> tuple | None:
    """One candidate step applied to the running total ``cur``, or None if it would break the
    rules (negative, zero, remainder, too big). Returns ``(op, *ints)``."""
    if op == "buy":
        return ("buy", rng.randint(2, 6 if big else 5), rng.randint(10, 60) if big else rng.randint(2, 12))
    if op == "get":
        return ("get", rng.randint(10, 200) if big else rng.randint(2, 20))  # >= 2: "1 more stickers"
    if op == "give":
        return ("give", rng.randint(2, cur * 2 // 3)) if cur >= 3 else None
    if op == "times":
        ks = [k for k in range(2, 5) if cur * k <= cap]
        return ("times", rng.choice(ks)) if ks else None
    # split / share: exact division only, at least 2 (split) or 1 (share) per part
    ks = [k for k in range(2, 10) if cur % k == 0 and cur // k >= (2 if op == "split" else 1)]
    return (op, rng.choice(ks)) if ks else None


def _apply_step(cur: int, step: tuple) -> int:
    """The running total after one generator step (``("start", a)`` ignores ``cur``)."""
    op, *x = step
    return {"start": lambda: x[0], "buy": lambda: cur + x[0] * x[1], "get": lambda: cur + x[0],
            "give": lambda: cur - x[0], "times": lambda: cur * x[0],
            "split": lambda: cur // x[0], "share": lambda: cur // x[0]}[op]()


def _one_problem(rng: random.Random, n_steps: int, small: bool = False) -> tuple[str, tuple, int]:
    """(problem text, steps, answer) for one word problem with ``n_steps`` operations; ``small``:
    only small numbers, every value below 1000."""
    big = rng.random() < 0.5 and not small
    name = rng.choice(_NAMES)
    items, c1, cs = rng.choice(_OBJECTS)
    friend = rng.choice([x for x in _NAMES if x != name])
    cur = rng.randint(40, 400) if big else rng.randint(3, 30)
    steps = [("start", cur)]
    fmt = dict(name=name, items=items, c1=c1, cs=cs, friend=friend, giver=rng.choice(_GIVERS))
    text = [rng.choice(_START).format(a=cur, **fmt)]
    for i in range(n_steps):
        last = i == n_steps - 1
        ops = ["buy", "get", "give", "times", "split"] + (["share"] if last else [])
        rng.shuffle(ops)
        # no op twice in a row: the text reads better and the chain stays multi-step
        ops = [o for o in ops if o != steps[-1][0]]
        step = next(s for s in (_try_step(rng, o, cur, big, 999 if small else _CAP) for o in ops) if s is not None)
        cur = _apply_step(cur, step)
        steps.append(step)
        args = dict(zip("km", step[1:])) if step[0] in ("buy", "times", "split", "share") else {"b": step[1]}
        conn = rng.choice(_CONNECT)
        text.append(rng.choice(_TEXT[step[0]]).format(c=conn, **args, **fmt))
    q = "How many {items} does each friend get?" if steps[-1][0] == "share" else rng.choice(_QUESTION)
    text.append(q.format(**fmt))
    return " ".join(text), tuple(steps), cur


def _arith_stream(seed: int, min_steps: int, max_steps: int, small: bool = False):
    """Endless stream of distinct generated Problems from one seeded RNG (prefix-stable)."""
    if not 1 <= min_steps <= max_steps:
        raise ValueError(f"need 1 <= min_steps <= max_steps, got {min_steps}..{max_steps}")
    rng, seen, i = random.Random(seed), set(), 0
    while True:
        n_steps = rng.randint(min_steps, max_steps)
        text, steps, answer = _one_problem(rng, n_steps, small)
        if text in seen:
            continue
        seen.add(text)
        yield Problem(f"arith-{seed}-{i}", text, str(answer), f"arithmetic-{n_steps}step", steps)
        i += 1


def make_arithmetic(n: int, seed: int, min_steps: int = 2, max_steps: int = 4, small: bool = False) -> list[Problem]:
    """``n`` distinct multi-step word problems with positive integer answers, from ``seed``.
    The first k of ``make_arithmetic(n, s)`` equal ``make_arithmetic(k, s)``."""
    stream = _arith_stream(seed, min_steps, max_steps, small)
    return [next(stream) for _ in range(n)]


EVAL_SEED, TRAIN_SEED, EVAL_SIZE, TRAIN_SIZE = 20260131, 1, 200, 2000


# source name -> (fewest, most operations per problem, small numbers only)
BUILTIN = {"builtin": (2, 4, False), "builtin-easy": (1, 2, True)}


def builtin_problems(split: str, n: int | None = None, steps: tuple = (2, 4, False)) -> list[Problem]:
    """The built-in split: "eval" is the first ``n`` (<= EVAL_SIZE, default all) of a fixed seed
    stream; "train" is ``n`` (default TRAIN_SIZE) problems of another stream, skipping any text
    that is in the full eval set. ``steps``: the range of operations per problem and whether only
    small numbers occur ("builtin-easy": 1-2 operations, every number below 1000: the laptop preset's). Deterministic: only ``random.Random(int)`` is used."""
    if split not in ("train", "eval"):
        raise ValueError(f"unknown builtin split {split!r}; use 'train' or 'eval'")
    if n is not None and n < 1:
        raise ValueError(f"n must be a positive integer or None, got {n}")
    evals = make_arithmetic(EVAL_SIZE, EVAL_SEED, *steps)
    if split == "eval":
        if n is not None and n > EVAL_SIZE:
            raise ValueError(f"the builtin eval split has {EVAL_SIZE} problems, asked for {n}")
        return [replace(p, id=f"eval-{i}") for i, p in enumerate(evals[:n])]
    banned, out = {p.problem for p in evals}, []
    for p in _arith_stream(TRAIN_SEED, *steps):
        if p.problem not in banned:
            out.append(replace(p, id=f"train-{len(out)}"))
            if len(out) == (n or TRAIN_SIZE):
                return out


# ----------------------------------------------------------------------------- loading
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_FILE_TYPES = (".json", ".jsonl", ".parquet", ".csv")  # .parquet/.csv and folders: read by `datasets`
_SUFFIXES = re.compile(r"(?P<name>.+?)(?::(?P<config>[\w.-]+))?(?:@(?P<split>[\w.-]+))?")


class ProblemSet(list):
    """The loaded problems (a list), with ``summary``: the one line train and eval print so that a
    person sees at a glance which shape was read and what a gold answer looks like."""

    def __init__(self, problems, summary: str = ""):
        super().__init__(problems)
        self.summary = summary


def parse_source(source: str) -> tuple[str, str | None, str | None]:
    """(name, config, split) of ``NAME[:CONFIG][@SPLIT]``: ``openai/gsm8k:main@test`` is the Hub
    set openai/gsm8k, config main, split test; ``./saved@eval`` a saved DatasetDict's split. An
    existing path is taken whole (a file name may hold ':' or '@')."""
    if source in BUILTIN or os.path.exists(os.path.expanduser(source)):
        return source, None, None
    m = _SUFFIXES.fullmatch(source)
    return m["name"], m["config"], m["split"]


def load_problems(source: str, split: str = "train", limit: int | None = None,
                  fields: FieldSpec | None = None) -> ProblemSet:
    """Problems from "builtin", a ``.json`` file (a list of objects or ``{"problems": [...]}``),
    a ``.jsonl`` file (one object per line), a ``.parquet`` or ``.csv`` file, a folder (written by
    ``Dataset[Dict].save_to_disk``, or holding data files), or a Hugging Face Hub dataset
    (``name[:config][@split]``; ``@split`` wins over ``split``). Rows are read in any shape of
    tasks/formats.py (GSM8K, MATH, MAWPS, SVAMP, AIME), or by the ``fields`` the user named;
    ``id`` and ``kind`` are optional (defaults: "<stem>-<index>" and the file stem). Raises
    DataError (one line)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit}")
    name, config, named_split = parse_source(source)
    split = named_split or split
    if name in BUILTIN:
        steps = BUILTIN[name]
        got = builtin_problems(split, limit, steps) if split == "train" else builtin_problems(split, None, steps)[:limit]
        return ProblemSet(got, summary_line(source, f"generated word problems ({split} split)", got))
    stem, rows = _read_rows(source, name, config, named_split, split)
    problems, shape = [], ""
    for i, (where, rec) in enumerate(rows):
        row_shape, text, gold = read_row(rec, fields or FieldSpec(), where)
        shape = shape or row_shape.describe()
        problems.append(Problem(row_id(rec, stem, i), text, gold, row_kind(rec, stem)))
    if not problems:
        raise DataError(f"{source}: no problems found; add records like "
                        '{"problem": "...", "answer": "..."}')
    seen: dict[str, int] = {}
    for i, p in enumerate(problems):  # results are keyed by id: a duplicate would merge two problems
        if seen.setdefault(p.id, i) != i:
            raise DataError(f"{source}: duplicate id {p.id!r} (records {seen[p.id]} and {i}); "
                            "make ids unique or drop the id field")
    return ProblemSet(problems[:limit], summary_line(source, shape, problems[:limit]))


def _read_rows(source: str, name: str, config: str | None, named_split: str | None,
               split: str) -> tuple[str, list[tuple[str, object]]]:
    """(stem, [(where, row)]) of a file, a folder or a Hub set; ``:config`` fits the Hub only and
    ``@split`` folders and the Hub only (a file is one split)."""
    path = os.path.expanduser(name)
    ext = os.path.splitext(path)[1].lower()
    looks_local = ext in _FILE_TYPES or path.startswith(("/", "./", "../", "~"))
    if looks_local and not os.path.exists(path):
        raise DataError(f"problem file not found: {source}; check the path, or use 'builtin'")
    if config and os.path.exists(path):
        raise DataError(f"{source}: ':{config}' names a config of a Hub dataset; a local file or folder has none")
    if os.path.isfile(path):
        if named_split:
            raise DataError(f"{source}: a file is one split; drop '@{named_split}' (or save a DatasetDict folder)")
        if ext not in _FILE_TYPES:
            raise DataError(f"{source}: unsupported problem file type {ext or '(none)'!r}; "
                            f"use {', '.join(_FILE_TYPES)} or a folder written by Dataset.save_to_disk")
        stem = os.path.splitext(os.path.basename(path))[0]
        return stem, _read_jsonl(path) if ext == ".jsonl" else _read_json(path) if ext == ".json" \
            else _read_with_datasets(name, split, path)
    if os.path.isdir(path):  # a save_to_disk folder, or a folder of data files
        return os.path.basename(os.path.abspath(path)), _read_with_datasets(name, split, path)
    return name.rstrip("/").split("/")[-1], _read_hub(name, config, split)


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8-sig") as f:  # -sig: tolerate a BOM from Windows editors
            return f.read()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save it as UTF-8") from None


def _read_json(path: str) -> list[tuple[str, object]]:
    """[(where, record)] from a .json file; where is "file: problems[i]"."""
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg}, column {e.colno}); "
                        "fix the syntax, or use .jsonl with one object per line") from None
    except ValueError:  # json reads an integer past Python's digit limit as a ValueError
        raise DataError(f"{path}: {_TOO_LONG}") from None
    if isinstance(data, dict) and isinstance(data.get("problems"), list):
        data = data["problems"]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of problems or {{\"problems\": [...]}}, "
                        f"got {type(data).__name__}; wrap the records in a list")
    return [(f"{path}: problems[{i}]", rec) for i, rec in enumerate(data)]


def _read_jsonl(path: str) -> list[tuple[str, object]]:
    """[(where, record)] from a .jsonl file (blank lines skipped); where is "file:line"."""
    rows = []
    for lineno, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append((f"{path}:{lineno}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON line ({e.msg}, column {e.colno}); "
                            "each line must be one complete JSON object") from None
        except ValueError:
            raise DataError(f"{path}:{lineno}: {_TOO_LONG}") from None
    return rows


def _load_datasets():
    try:
        import datasets  # lazy: heavy, and only needed for Parquet/CSV, folders and Hub sources
    except ImportError:
        raise DataError("reading this source needs the 'datasets' package: pip install datasets, "
                        "or convert it to .json/.jsonl") from None
    return datasets


def _read_with_datasets(source: str, split: str, path: str) -> list[tuple[str, object]]:
    """[(where, row)] from a .parquet/.csv file or a local folder, read by ``datasets``: a folder
    with save_to_disk's files by ``load_from_disk`` (a DatasetDict: its ``split``, or its only one),
    any other folder or file by ``load_dataset``. Any failure -> DataError (one line)."""
    datasets = _load_datasets()
    datasets.disable_progress_bars()  # a bar per tiny local file is noise next to the step table
    saved = os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f))
                                         for f in ("dataset_dict.json", "state.json"))
    try:
        if saved:
            ds = datasets.load_from_disk(path)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds and len(ds) != 1:
                    raise DataError(f"{source}: no split {split!r} in this DatasetDict (it has "
                                    f"{', '.join(ds)}); save that split, or pass one split's folder")
                ds = ds[split] if split in ds else next(iter(ds.values()))
        elif os.path.isdir(path):
            ds = datasets.load_dataset(path, split=split)
        else:
            kind = {".csv": "csv", ".parquet": "parquet"}[os.path.splitext(path)[1].lower()]
            ds = datasets.load_dataset(kind, data_files=path, split="train")
    except DataError:
        raise
    except Exception as e:  # unreadable file, no data files, bad split: all mean "not loadable"
        msg = " ".join(str(e).split())[:200]
        raise DataError(f"could not read {source} with the datasets library ({type(e).__name__}: {msg}); "
                        "check the file, or convert it to .json/.jsonl") from None
    where = f"{source} [{split}] row" if os.path.isdir(path) else f"{source}: row"
    return [(f"{where} {i}", dict(row)) for i, row in enumerate(ds)]


def _read_hub(source: str, config: str | None, split: str) -> list[tuple[str, object]]:
    """[(where, row)] from ``datasets.load_dataset(source, config, split=split)``; any failure ->
    DataError. Without network, set HF_HUB_OFFLINE=1 to fail at once instead of after the Hub
    client's retries."""
    fix = "pass a local file (.json/.jsonl/.parquet/.csv), a folder (./name) or 'builtin'"
    if not _HUB_ID.fullmatch(source):
        raise DataError(f"{source!r} is not a file and not a valid Hugging Face Hub dataset name "
                        f"(NAME[:CONFIG][@SPLIT]); {fix}")
    datasets = _load_datasets()
    named = f"{source}:{config}" if config else source
    try:
        ds = datasets.load_dataset(source, config, split=split)
    except Exception as e:  # network, missing repo or config, bad split, auth: all mean "not loadable"
        msg = (str(e).strip().splitlines() or [""])[0][:200]
        raise DataError(f"could not load {named!r} (split {split!r}): not a local file and not "
                        f"loadable from the Hugging Face Hub ({type(e).__name__}: {msg}); a config "
                        f"and split go as NAME:CONFIG@SPLIT (openai/gsm8k:main@test); {fix}") from None
    return [(f"{named} [{split}] row {i}", dict(row)) for i, row in enumerate(ds)]
