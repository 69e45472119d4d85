"""The math task's problems: a built-in generator of arithmetic word problems with a fixed
train/eval split, and loaders for JSON/JSONL files (the AIME/AMC layout) and Hub datasets.

Answers are graded in tasks/grader.py.
"""
from __future__ import annotations

import json
import os
import random
import re
import sys
from dataclasses import dataclass, replace


class DataError(ValueError):
    """Bad problem data; the message is one line: what is wrong, where (file:line), how to fix."""


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
_PROBLEM_KEYS = ("problem", "prompt", "question")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
_FILE_TYPES = (".json", ".jsonl", ".parquet", ".csv")  # .parquet/.csv and folders: read by `datasets`


def load_problems(source: str, split: str = "train", limit: int | None = None) -> list[Problem]:
    """Problems from "builtin", a ``.json`` file (a list of objects or ``{"problems": [...]}``),
    a ``.jsonl`` file (one object per line), a ``.parquet`` or ``.csv`` file, a folder (written by
    ``Dataset[Dict].save_to_disk``, or holding data files), or a Hugging Face Hub dataset name. Each record needs
    problem text (first of problem|prompt|question) and ``answer``; ``id`` and ``kind`` are
    optional (defaults: "<stem>-<index>" and the file stem). Raises DataError (one line)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit}")
    if source in BUILTIN:
        steps = BUILTIN[source]
        return builtin_problems(split, limit, steps) if split == "train" else builtin_problems(split, None, steps)[:limit]
    path = os.path.expanduser(source)
    ext = os.path.splitext(path)[1].lower()
    looks_local = ext in _FILE_TYPES or path.startswith(("/", "./", "../", "~"))
    if looks_local and not os.path.exists(path):
        raise DataError(f"problem file not found: {source}; check the path, or use 'builtin'")
    if os.path.isfile(path):
        if ext not in _FILE_TYPES:
            raise DataError(f"{source}: unsupported problem file type {ext or '(none)'!r}; "
                            f"use {', '.join(_FILE_TYPES)} or a folder written by Dataset.save_to_disk")
        stem = os.path.splitext(os.path.basename(path))[0]
        rows = _read_jsonl(path) if ext == ".jsonl" else _read_json(path) if ext == ".json" \
            else _read_with_datasets(source, split, path)
    elif os.path.isdir(path):  # a save_to_disk folder, or a folder of data files
        stem, rows = os.path.basename(os.path.abspath(path)), _read_with_datasets(source, split, path)
    else:
        stem, rows = source.rstrip("/").split("/")[-1], _read_hub(source, split)
    problems = [_to_problem(rec, where, f"{stem}-{i}", stem) for i, (where, rec) in enumerate(rows)]
    if not problems:
        raise DataError(f"{source}: no problems found; add records like "
                        '{"problem": "...", "answer": "..."}')
    seen: dict[str, int] = {}
    for i, p in enumerate(problems):  # results are keyed by id: a duplicate would merge two problems
        if seen.setdefault(p.id, i) != i:
            raise DataError(f"{source}: duplicate id {p.id!r} (records {seen[p.id]} and {i}); "
                            "make ids unique or drop the id field")
    return problems[:limit]


_TOO_LONG = (f"a number has more than {sys.get_int_max_str_digits()} digits (Python's limit); "
             "write a very long answer as a string, in quotes")


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


def _read_hub(source: str, split: str) -> list[tuple[str, object]]:
    """[(where, row)] from ``datasets.load_dataset(source, split=split)``; any failure -> DataError.
    Without network, set HF_HUB_OFFLINE=1 to fail at once instead of after the Hub client's retries."""
    fix = "pass a local file (.json/.jsonl/.parquet/.csv), a folder (./name) or 'builtin'"
    if not _HUB_ID.fullmatch(source):
        raise DataError(f"{source!r} is not a file and not a valid Hugging Face Hub dataset name; {fix}")
    datasets = _load_datasets()
    try:
        ds = datasets.load_dataset(source, split=split)
    except Exception as e:  # network, missing repo, bad split, auth: all mean "not loadable"
        msg = (str(e).strip().splitlines() or [""])[0][:200]
        raise DataError(f"could not load {source!r} (split {split!r}): not a local file and not "
                        f"loadable from the Hugging Face Hub ({type(e).__name__}: {msg}); {fix}") from None
    return [(f"{source} [{split}] row {i}", dict(row)) for i, row in enumerate(ds)]


def _to_problem(rec: object, where: str, default_id: str, default_kind: str) -> Problem:
    """Validate one record and build a Problem; errors name ``where`` and the accepted fields."""
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}; "
                        'write each record as {"problem": "...", "answer": "..."}')
    key = next((k for k in _PROBLEM_KEYS if rec.get(k) is not None), None)
    if key is None:
        raise DataError(f"{where}: no problem text; put it in one of the fields "
                        f"{', '.join(_PROBLEM_KEYS)}")
    text = rec[key]
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: field {key!r} must be a non-empty string, got {text!r:.40}")
    if rec.get("answer") is None:
        raise DataError(f"{where}: no 'answer' field; add the gold answer as \"answer\" "
                        "(a string or a number)")
    pid = rec.get("id")
    return Problem(default_id if pid is None else str(pid), text.strip(),
                   _answer_str(rec["answer"], where), str(rec.get("kind") or default_kind))


def _answer_str(v: object, where: str) -> str:
    """Gold answer as a string: 142.0 -> "142", 23 -> "23", "023" kept as given."""
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise DataError(f"{where}: 'answer' must be a string or a number, got {type(v).__name__}")
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise DataError(f"{where}: 'answer' is {v}; give a finite number or a string")
        return str(int(v)) if v.is_integer() else repr(v)
    try:
        s = str(v).strip()
    except ValueError:  # an int past Python's digit limit (e.g. from a Hub dataset)
        raise DataError(f"{where}: 'answer' {_TOO_LONG}") from None
    if not s:
        raise DataError(f"{where}: 'answer' is empty; give the gold answer")
    return s
