"""How one row of a published math set becomes a problem and its gold answer.

Sets are published in a few shapes, told apart by their field names (docs/data.md):

    gsm8k   question; answer = a worked solution ending in "#### 18"  -> gold after ####
    math    problem; answer, or else the last \\boxed{} of solution   (MATH, MATH-500, NuminaMath)
    mawps   input; target (a float: 14.0 -> 14)
    svamp   Body + " " + Question; Answer
    plain   problem | prompt | question; answer                      (AIME, AMC, our own files)

Anything else is named with --problem-field / --answer-field / --answer-format. The shape is found
from each row's fields (the set is named by its first row's); a row that does not fit is refused
with its place (file:line). Never a silent guess: an answer that looks like a worked
solution and that no rule extracted is refused, because a wrong gold answer makes every episode's
outcome reward 0 without a word.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass

from tasks.grader import extract_boxed


class DataError(ValueError):
    """Bad problem data; the message is one line: what is wrong, where (file:line), how to fix.
    Defined here, the lowest module of the loaders; tasks.problems re-exports it."""


FORMATS = ("auto", "plain", "gsm8k", "boxed")
_PROBLEM_KEYS = ("problem", "prompt", "question", "input")
_ANSWER_KEYS = ("answer", "target", "solution")
_FLAGS = "--problem-field FIELD, --answer-field FIELD, --answer-format plain|gsm8k|boxed"
_WORKED_CHARS = 100  # a gold answer longer than this (or on several lines) is a worked solution
_TOO_LONG = (f"a number has more than {sys.get_int_max_str_digits()} digits (Python's limit); "
             "write a very long answer as a string, in quotes")


@dataclass(frozen=True)
class FieldSpec:
    """What the user said about the fields (--problem-field, --answer-field, --answer-format):
    empty and "auto" mean "find them from the shape"."""
    problem_field: str = ""
    answer_field: str = ""
    answer_format: str = "auto"

    @classmethod
    def of(cls, obj) -> FieldSpec:
        """The spec held by a Config (or any object with these attributes; missing ones: defaults)."""
        return cls(getattr(obj, "problem_field", "") or "", getattr(obj, "answer_field", "") or "",
                   getattr(obj, "answer_format", "auto") or "auto")


@dataclass(frozen=True)
class Shape:
    """The fields one set is read from: ``problem`` (joined with a space), ``answer`` and the
    ``rule`` that extracts the gold answer from it (plain, gsm8k, boxed)."""
    name: str
    problem: tuple[str, ...]
    answer: str
    rule: str
    explicit: bool = False  # the rule was named by --answer-format: plain then takes any text

    def describe(self) -> str:
        """"gsm8k (question -> answer after ####)": what was read, in the words of docs/data.md."""
        how = {"plain": "", "gsm8k": " after ####", "boxed": "'s last \\boxed{}"}[self.rule]
        return f"{self.name} ({' + '.join(self.problem)} -> {self.answer}{how})"


def _key(rec: dict, name: str) -> str | None:
    """The record's own spelling of field ``name``: exact first, else case-insensitive (SVAMP
    writes Body/Question/Answer, a re-export may write body/question/answer)."""
    if name in rec:
        return name
    return next((k for k in rec if isinstance(k, str) and k.lower() == name.lower()), None)


def _seen(rec: dict, most: int = 12) -> str:
    """The row's field names for an error line (the first ``most``: the line stays one line)."""
    names = [str(k)[:30] for k in rec]
    return ", ".join(names[:most]) + (f" (+{len(names) - most} more)" if len(names) > most else "") or "none"


def detect_shape(rec: object, spec: FieldSpec, where: str) -> Shape:
    """The shape of one row, from its field names, its answer and the user's flags; DataError (one
    line, naming the fields it saw and the flags to use) when the fields cannot be told."""
    if not isinstance(rec, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}; "
                        'write each record as {"problem": "...", "answer": "..."}')
    problem = _problem_fields(rec, spec, where)
    answer = _answer_field(rec, spec, where)
    rule, explicit = spec.answer_format, spec.answer_format != "auto"
    if not explicit:
        first = rec[answer]
        rule = "boxed" if answer.lower() == "solution" else \
            "gsm8k" if isinstance(first, str) and "####" in first else "plain"
    return Shape(_shape_name(problem, answer, rule, rec, spec), problem, answer, rule, explicit)


def _problem_fields(rec: dict, spec: FieldSpec, where: str) -> tuple[str, ...]:
    """The field(s) of the problem text: --problem-field (A+B joins two), SVAMP's Body + Question,
    else the first of problem, prompt, question, input."""
    if spec.problem_field:
        names = [n.strip() for n in spec.problem_field.split("+")]
        missing = [n for n in names if _key(rec, n) is None]
        if missing:
            raise DataError(f"{where}: no field {missing[0]!r} (--problem-field); this row has "
                            f"fields {_seen(rec)}")
        return tuple(_key(rec, n) for n in names)
    body, question = _key(rec, "body"), _key(rec, "question")
    if body and question:
        return body, question
    key = next((k for n in _PROBLEM_KEYS if (k := _key(rec, n)) and rec[k] is not None), None)
    if key is None:
        raise DataError(f"{where}: no problem text among fields {_seen(rec)}; put it in one of the "
                        f"fields {', '.join(_PROBLEM_KEYS)}, or name yours: {_FLAGS}")
    return (key,)


def _answer_field(rec: dict, spec: FieldSpec, where: str) -> str:
    """The gold answer's field: --answer-field, else the first of answer, target, solution."""
    if spec.answer_field:
        if (key := _key(rec, spec.answer_field)) is None:
            raise DataError(f"{where}: no field {spec.answer_field!r} (--answer-field); this row has "
                            f"fields {_seen(rec)}")
        return key
    key = next((k for n in _ANSWER_KEYS if (k := _key(rec, n)) and rec[k] is not None), None)
    if key is None:
        raise DataError(f"{where}: no 'answer' field (nor target, solution) among fields {_seen(rec)}; "
                        f"add the gold answer as \"answer\" (a string or a number), or name yours: {_FLAGS}")
    return key


def _shape_name(problem: tuple, answer: str, rule: str, rec: dict, spec: FieldSpec) -> str:
    """The published set this shape is known from (or "fields" when the user named them)."""
    if spec.problem_field or spec.answer_field:
        return "fields"
    p, a = problem[0].lower(), answer.lower()
    if len(problem) == 2:
        return "svamp"
    if rule == "gsm8k":
        return "gsm8k"
    if (p, a) == ("input", "target"):
        return "mawps"
    if p == "problem" and (a == "solution" or _key(rec, "solution")):
        return "math"
    return "plain"


def read_row(rec: object, spec: FieldSpec, where: str) -> tuple[Shape, str, str]:
    """(shape, problem text, gold answer) of one row; DataError naming ``where``. The shape is
    found per row, so a file may mix problem/prompt/question rows; the set is named by its first."""
    shape = detect_shape(rec, spec, where)
    parts = []
    for field in shape.problem:
        text = rec.get(field)
        if not isinstance(text, str) or not text.strip():
            what = "nothing" if text is None else f"{text!r:.40}"
            raise DataError(f"{where}: field {field!r} must be a non-empty string, got {what}")
        parts.append(text.strip())
    if rec.get(shape.answer) is None:
        raise DataError(f"{where}: no {shape.answer!r} field; add the gold answer as \"{shape.answer}\" "
                        "(a string or a number)")
    return shape, " ".join(parts), gold_answer(rec[shape.answer], shape, where)


def gold_answer(v: object, shape: Shape, where: str) -> str:
    """The gold answer in ``v`` by the shape's rule: after the last ####, the last \\boxed{}, or
    the value itself -- refused when it looks like a worked solution no rule was told to read."""
    field = shape.answer
    if shape.rule == "plain":
        s = answer_str(v, where, field)
        if not shape.explicit and looks_worked(s):
            hint = "gsm8k" if "####" in s else "boxed" if extract_boxed(s) else "plain"
            lines = len(s.splitlines())
            raise DataError(f"{where}: {field!r} looks like a worked solution ({len(s)} chars, {lines} "
                            f"line{'s' * (lines > 1)}), not a gold answer; say how to read it: "
                            f"--answer-format {hint} (or --answer-field FIELD)")
        return s
    if not isinstance(v, str):
        raise DataError(f"{where}: {field!r} must be text to read a {shape.rule} answer from, "
                        f"got {type(v).__name__}; use --answer-format plain")
    if shape.rule == "gsm8k":
        head, mark, tail = v.rpartition("####")
        gold = drop_thousands(tail.strip())
        if not mark or not gold:
            raise DataError(f"{where}: {field!r} has no '#### <answer>' line (GSM8K's form); fix the "
                            "row, or use --answer-format boxed|plain")
        return gold
    gold = extract_boxed(v)
    if gold is None:
        raise DataError(f"{where}: {field!r} has no complete \\boxed{{...}}; fix the row, or name "
                        "a field holding the answer itself: --answer-field FIELD")
    return gold.strip()


def drop_thousands(s: str) -> str:
    """"1,000" -> "1000", "1,450,000" -> "1450000": GSM8K writes thousands separators; "1,2" and
    "(1, 2)" are kept (a list is not a number)."""
    return s.replace(",", "") if re.fullmatch(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s) else s


def looks_worked(s: str) -> bool:
    """Does this 'answer' read like a worked solution (several lines, or far longer than an answer)?"""
    return "\n" in s.strip() or len(s) > _WORKED_CHARS


def answer_str(v: object, where: str, field: str = "answer") -> str:
    """Gold answer as a string: 142.0 -> "142", 23 -> "23", "023" kept as given."""
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise DataError(f"{where}: {field!r} must be a string or a number, got {type(v).__name__}")
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            raise DataError(f"{where}: {field!r} is {v}; give a finite number or a string")
        return str(int(v)) if v.is_integer() else repr(v)
    try:
        s = str(v).strip()
    except ValueError:  # an int past Python's digit limit (e.g. from a Hub dataset)
        raise DataError(f"{where}: {field!r} {_TOO_LONG}") from None
    if not s:
        raise DataError(f"{where}: {field!r} is empty; give the gold answer")
    return s


def row_id(rec: dict, stem: str, i: int) -> str:
    """The row's own id (id, ID) as given; else "<stem>-<idx>" (MAWPS, GSM8K's test file number
    their rows with idx), else "<stem>-<i>"."""
    if (key := _key(rec, "id")) is not None and rec[key] is not None:
        return str(rec[key])
    key = _key(rec, "idx")
    return f"{stem}-{rec[key] if key is not None and rec[key] is not None else i}"


def row_kind(rec: dict, default: str) -> str:
    """The row's task type for per-type reports: kind, else type (MAWPS singleeq, SVAMP Subtraction,
    MATH Algebra), else ``default`` (the file's stem)."""
    key = _key(rec, "kind") or _key(rec, "type")
    value = rec.get(key) if key else None
    return str(value) if isinstance(value, (str, int)) and str(value).strip() else default


def summary_line(source: str, shape: str, problems: list) -> str:
    """The one line train and eval print: which shape was read, how many rows, one example."""
    if not problems:
        return f"data {source}: {shape}, 0 rows"
    p = problems[0]
    text = " ".join(p.problem.split())
    text = text if len(text) <= 60 else text[:57] + "..."
    gold = p.answer if len(p.answer) <= 30 else p.answer[:27] + "..."
    return f"data {source}: {shape}, {len(problems)} rows; e.g. \"{text}\" -> {gold}"
