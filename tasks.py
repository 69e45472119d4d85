"""The math task: problems (built-in generator, JSON/JSONL files, Hub datasets) and the grader.

The episode's answer is the verifier's last ``\\boxed{...}``; ``grade`` compares it with the gold
answer. Numbers compare exactly (``fractions.Fraction``), everything else by a normalised string.
"""
from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass, replace
from fractions import Fraction


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


def _try_step(rng: random.Random, op: str, cur: int, big: bool) -> tuple | None:
    """One candidate step applied to the running total ``cur``, or None if it would break the
    rules (negative, zero, remainder, too big). Returns ``(op, *ints)``."""
    if op == "buy":
        return ("buy", rng.randint(2, 6 if big else 5), rng.randint(10, 60) if big else rng.randint(2, 12))
    if op == "get":
        return ("get", rng.randint(10, 200) if big else rng.randint(2, 20))  # >= 2: "1 more stickers"
    if op == "give":
        return ("give", rng.randint(2, cur * 2 // 3)) if cur >= 3 else None
    if op == "times":
        ks = [k for k in range(2, 5) if cur * k <= _CAP]
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


def _one_problem(rng: random.Random, n_steps: int) -> tuple[str, tuple, int]:
    """(problem text, steps, answer) for one word problem with ``n_steps`` operations."""
    big = rng.random() < 0.5
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
        step = next(s for s in (_try_step(rng, o, cur, big) for o in ops) if s is not None)
        cur = _apply_step(cur, step)
        steps.append(step)
        args = dict(zip("km", step[1:])) if step[0] in ("buy", "times", "split", "share") else {"b": step[1]}
        conn = rng.choice(_CONNECT)
        text.append(rng.choice(_TEXT[step[0]]).format(c=conn, **args, **fmt))
    q = "How many {items} does each friend get?" if steps[-1][0] == "share" else rng.choice(_QUESTION)
    text.append(q.format(**fmt))
    return " ".join(text), tuple(steps), cur


def _arith_stream(seed: int, min_steps: int, max_steps: int):
    """Endless stream of distinct generated Problems from one seeded RNG (prefix-stable)."""
    if not 1 <= min_steps <= max_steps:
        raise ValueError(f"need 1 <= min_steps <= max_steps, got {min_steps}..{max_steps}")
    rng, seen, i = random.Random(seed), set(), 0
    while True:
        n_steps = rng.randint(min_steps, max_steps)
        text, steps, answer = _one_problem(rng, n_steps)
        if text in seen:
            continue
        seen.add(text)
        yield Problem(f"arith-{seed}-{i}", text, str(answer), f"arithmetic-{n_steps}step", steps)
        i += 1


def make_arithmetic(n: int, seed: int, min_steps: int = 2, max_steps: int = 4) -> list[Problem]:
    """``n`` distinct multi-step word problems with positive integer answers, from ``seed``.
    The first k of ``make_arithmetic(n, s)`` equal ``make_arithmetic(k, s)``."""
    stream = _arith_stream(seed, min_steps, max_steps)
    return [next(stream) for _ in range(n)]


EVAL_SEED, TRAIN_SEED, EVAL_SIZE, TRAIN_SIZE = 20260131, 1, 200, 2000


def builtin_problems(split: str, n: int | None = None) -> list[Problem]:
    """The built-in split: "eval" is the first ``n`` (<= EVAL_SIZE, default all) of a fixed seed
    stream; "train" is ``n`` (default TRAIN_SIZE) problems of another stream, skipping any text
    that is in the full eval set. Deterministic: only ``random.Random(int)`` is used."""
    if split not in ("train", "eval"):
        raise ValueError(f"unknown builtin split {split!r}; use 'train' or 'eval'")
    if n is not None and n < 1:
        raise ValueError(f"n must be a positive integer or None, got {n}")
    evals = make_arithmetic(EVAL_SIZE, EVAL_SEED)
    if split == "eval":
        if n is not None and n > EVAL_SIZE:
            raise ValueError(f"the builtin eval split has {EVAL_SIZE} problems, asked for {n}")
        return [replace(p, id=f"eval-{i}") for i, p in enumerate(evals[:n])]
    banned, out = {p.problem for p in evals}, []
    for p in _arith_stream(TRAIN_SEED, 2, 4):
        if p.problem not in banned:
            out.append(replace(p, id=f"train-{len(out)}"))
            if len(out) == (n or TRAIN_SIZE):
                return out


# ----------------------------------------------------------------------------- loading
_PROBLEM_KEYS = ("problem", "prompt", "question")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def load_problems(source: str, split: str = "train", limit: int | None = None) -> list[Problem]:
    """Problems from "builtin", a ``.json`` file (a list of objects or ``{"problems": [...]}``),
    a ``.jsonl`` file (one object per line), or a Hugging Face Hub dataset name. Each record needs
    problem text (first of problem|prompt|question) and ``answer``; ``id`` and ``kind`` are
    optional (defaults: "<stem>-<index>" and the file stem). Raises DataError (one line)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive integer or None, got {limit}")
    if source == "builtin":
        return builtin_problems(split, limit) if split == "train" else builtin_problems(split)[:limit]
    path = os.path.expanduser(source)
    ext = os.path.splitext(path)[1].lower()
    looks_local = ext in (".json", ".jsonl") or path.startswith(("/", "./", "../", "~"))
    if looks_local and not os.path.exists(path):
        raise DataError(f"problem file not found: {source}; check the path, or use 'builtin'")
    if os.path.isfile(path):
        if ext not in (".json", ".jsonl"):
            raise DataError(f"{source}: unsupported problem file type {ext or '(none)'!r}; "
                            "convert it to .json (a list of objects) or .jsonl (one object per line)")
        stem = os.path.splitext(os.path.basename(path))[0]
        rows = _read_jsonl(path) if ext == ".jsonl" else _read_json(path)
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
    return rows


def _read_hub(source: str, split: str) -> list[tuple[str, object]]:
    """[(where, row)] from ``datasets.load_dataset(source, split=split)``; any failure -> DataError.
    Without network, set HF_HUB_OFFLINE=1 to fail at once instead of after the Hub client's retries."""
    fix = "pass a local .json/.jsonl file or 'builtin'"
    if not _HUB_ID.fullmatch(source):
        raise DataError(f"{source!r} is not a file and not a valid Hugging Face Hub dataset name; {fix}")
    try:
        import datasets  # lazy: heavy, and only needed for Hub sources
    except ImportError:
        raise DataError(f"cannot load Hub dataset {source!r}: the 'datasets' package is not "
                        f"installed; pip install datasets, or {fix}") from None
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
    s = str(v).strip()
    if not s:
        raise DataError(f"{where}: 'answer' is empty; give the gold answer")
    return s


# ----------------------------------------------------------------------------- grading
_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_TEXT_CMD = r"\\(?:text|textrm|textnormal|textbf|textit|mbox|mathrm|mathbf|mathit|operatorname)"
_NUM = r"[+-]?\s*(?:\d{1,3}(?:[, ]\d{3})+(?:\.\d*)?|\d+\.?\d*|\.\d+)"
_UNIT_TEXT = re.compile(_TEXT_CMD + r"\s*\{\s*[A-Za-z][A-Za-z ./]*\}\s*(?:\^\s*\{?\s*[23]\s*\}?)?\s*$")
_UNIT_WORDS = re.compile(r"^(.*?\S)\s+((?:[A-Za-z]{2,}\s+)*[A-Za-z]{2,})(?:\^\s*\{?\s*[23]\s*\}?)?\s*$")
# words that make an expression, not a unit: "2 pi" must not become 2
_NOT_UNITS = {"pi", "sqrt", "and", "or", "to", "times", "cdot", "mod", "over", "plus", "minus",
              "infty", "inf", "infinity", "ln", "log", "sin", "cos", "tan"}


def _braced(s: str, i: int) -> tuple[str, int] | None:
    """For ``s[i] == "{"``: (contents up to the matching "}", index after it), or None if the
    group never closes. Escaped braces (``\\{``) do not count."""
    depth, j = 0, i
    while j < len(s):
        ch = s[j]
        if ch == "\\":
            j += 2
            continue
        depth += (ch == "{") - (ch == "}")
        if depth == 0:
            return s[i + 1:j], j + 1
        j += 1
    return None


def extract_boxed(text: str | None) -> str | None:
    """Contents of the last top-level ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces handled;
    ``\\boxed 5`` too). A box that never closes (output cut off) is ignored, so the last complete
    box wins. None if there is no box."""
    found, pos = None, 0
    while text and (m := _BOX.search(text, pos)):
        i = m.end()
        while i < len(text) and text[i].isspace():
            i += 1
        if i < len(text) and text[i] == "{":
            got = _braced(text, i)
            if got is None:
                break
            found, pos = got
        elif i > m.end() and (tok := re.match(r"[^\s$]+", text[i:])):
            found, pos = tok.group(), i + tok.end()
        else:
            pos = m.end()
    return found


def _unwrap(s: str, cmd: str) -> str:
    """Replace every ``\\cmd{X}`` (``cmd`` a regex) by ``X``, balanced braces respected."""
    while m := re.search(cmd + r"\s*\{", s):
        got = _braced(s, m.end() - 1)
        if got is None:
            return s
        s = s[:m.start()] + got[0] + s[got[1]:]
    return s


def _strip_wrappers(s: str) -> str:
    """Peel ``$..$``, ``\\(..\\)``, ``\\[..\\]``, a whole ``\\boxed{..}`` or ``{..}``, a trailing period."""
    while True:
        old, s = s, s.strip()
        if s.endswith(".") and not s.endswith(".."):
            s = s[:-1].rstrip()
        for a, b in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if len(s) >= len(a) + len(b) and s.startswith(a) and s.endswith(b):
                s = s[len(a):len(s) - len(b)]
        if (m := _BOX.match(s)) and (i := s.find("{", m.end())) >= 0 and not s[m.end():i].strip():
            if (got := _braced(s, i)) and got[1] == len(s):
                s = got[0]
        if s.startswith("{") and (got := _braced(s, 0)) and got[1] == len(s):
            s = got[0]  # "{5}" -> "5"
        if s == old:
            return s


def _to_fraction(s: str) -> Fraction | None:
    """Exact value of a plain number ("1,000", "-0.50", "023"), "a/b" or "\\frac{a}{b}"; else None."""
    s = s.strip()
    if m := re.fullmatch(r"([+-]?)\s*\\frac\{([^{}]*)\}\{([^{}]*)\}", s):
        sign, parts = (-1 if m[1] == "-" else 1), (m[2], m[3])
    elif m := re.fullmatch(rf"({_NUM})\s*/\s*({_NUM})", s):
        sign, parts = 1, (m[1], m[2])
    elif re.fullmatch(_NUM, s):
        return Fraction(re.sub(r"[\s,]", "", s))
    else:
        return None
    num, den = (Fraction(re.sub(r"[\s,]", "", p)) if re.fullmatch(_NUM, p.strip()) else None
                for p in parts)
    return None if num is None or not den else sign * num / den


def _clean_latex(s: str) -> str:
    """Formatting-only LaTeX removed or made canonical (spacing, \\left/\\right, \\dfrac, degrees)."""
    s = s.replace("\u2212", "-").replace("{,}", ",")
    s = re.sub(r"[\u00a0\u2009\u202f]|\\[,;:> ]|\\q?quad(?![A-Za-z])|~", " ", s)
    s = re.sub(r"\\!|\\displaystyle|\\(?:left|right)(?![A-Za-z])", "", s)
    s = re.sub(r"\\[dtc]frac(?![A-Za-z])", r"\\frac", s)
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|(?<=\d)\s*\\circ|\\degree|°", "", s)
    s = s.replace("\\$", "").replace("$", "").replace("\\%", "%")
    brace = r"([A-Za-z0-9]|\{[^{}]*\})"
    s = re.sub(r"\\frac\s*" + brace + r"\s*" + brace,
               lambda m: "\\frac{%s}{%s}" % (m[1].strip("{}"), m[2].strip("{}")), s)
    s = re.sub(r"\\sqrt\s*([A-Za-z0-9])", r"\\sqrt{\1}", s)
    return re.sub(r"([\^_])\{(\w)\}", r"\1\2", s)  # x^{2} -> x^2


def _strip_units(s: str) -> str:
    """Drop trailing ``\\text{ cm}``-style units (any prefix) and bare unit words or "%" after a
    number ("5 cm", "42 apples", "50%")."""
    while (m := _UNIT_TEXT.search(s)) and s[:m.start()].strip():
        s = s[:m.start()].rstrip()
    s = _unwrap(s, _TEXT_CMD)
    m = _UNIT_WORDS.match(s)
    if m and _to_fraction(m[1]) is not None and not set(m[2].lower().split()) & _NOT_UNITS:
        s = m[1]
    return s[:-1] if s.endswith("%") and _to_fraction(s[:-1]) is not None else s


def normalize_answer(s: str | None) -> str:
    """Canonical form of an answer: numbers become exact "n" or "p/q" (so "0.75", "3/4",
    "\\dfrac34" -> "3/4"; "023", "1,000" -> "23", "1000"); anything else is the string with
    wrappers, units and spacing removed. "" for None or empty."""
    if s is None:
        return ""
    s = _clean_latex(_strip_wrappers(str(s)))
    lhs = re.fullmatch(r"\s*(?:[A-Za-z]{1,3}|\\[A-Za-z]+)(?:_\{?\w+\}?)?\s*=(.+)", s)
    if lhs and "=" not in lhs[1]:  # "x = 5" -> "5", but not "x = y = 5"
        s = lhs[1]
    s = _strip_wrappers(_strip_units(_strip_wrappers(s)))
    if (v := _to_fraction(s)) is not None:
        return str(v)  # Fraction prints "23" or "-3/4"
    # spaces go, except between two digits: "1 2" must not become 12
    return re.sub(r"\s+", lambda m: " " if 0 < m.start() and m.end() < len(s)
                  and s[m.start() - 1].isdigit() and s[m.end()].isdigit() else "", s)


def is_equiv(pred: str | None, gold: str) -> bool:
    """True if ``pred`` and ``gold`` normalise to the same non-empty canonical form."""
    a, b = normalize_answer(pred), normalize_answer(gold)
    return bool(a) and a == b


def grade(action_text: str, gold: str) -> bool:
    """Is the last boxed answer in ``action_text`` equivalent to ``gold``?"""
    return is_equiv(extract_boxed(action_text), gold)
