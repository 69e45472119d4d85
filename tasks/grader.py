"""Grading math answers: the last ``\\boxed{...}`` of an action, and whether it equals the gold answer.

Numbers compare exactly (``fractions.Fraction``: "0.75" = "3/4" = "\\dfrac34", "1,000" = "1000",
"023" = "23"; a fraction rounded to 4+ decimals, 0.6666666667, = "2/3"); units, degrees, ``$...$`` and ``x =`` are stripped; everything else compares as a
normalised string; powers and scientific notation are numbers ("2^{10}" = "1e3" + 24), square roots
are simplified ("\\sqrt8" = "2\\sqrt2"), "a/b" is "\\frac{a}{b}" and "(B)" is "B".
tests/test_grader.py lists what must and must not match; `--grader math-verify` adds math-verify.
"""
from __future__ import annotations

import math
import re
from fractions import Fraction

_BOX = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_TEXT_CMD = r"\\(?:text|textrm|textnormal|textbf|textit|mbox|mathrm|mathbf|mathit|operatorname)"
_NUM = r"[+-]?\s*(?:\d{1,3}(?:[, ]\d{3})+(?:\.\d*)?|\d+\.?\d*|\.\d+)"
_UNIT_TEXT = re.compile(_TEXT_CMD + r"\s*\{\s*[A-Za-z][A-Za-z ./]*\}\s*(?:\^\s*\{?\s*[23]\s*\}?)?\s*$")
_UNIT_WORDS = re.compile(r"^(.*?\S)\s+((?:[A-Za-z]{2,}\s+)*(?:[A-Za-z]{2,}|[A-Za-z]+/[A-Za-z]+))(?:\^\s*\{?\s*[23]\s*\}?)?\s*$")
# words that make an expression, not a unit: "2 pi" must not become 2
_MAX_EXP = 400  # 10^400 at most: a power or exponent beyond that is compared as a string
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
    ``\\boxed 5`` too). A box that never closes (output cut off) or holds nothing (``\\boxed{}``)
    is ignored, so the last complete, non-empty box wins. None if there is no such box."""
    found, pos = None, 0
    while text and (m := _BOX.search(text, pos)):
        i = m.end()
        while i < len(text) and text[i].isspace():
            i += 1
        if i < len(text) and text[i] == "{":
            got = _braced(text, i)
            if got is None:
                break
            if got[0].strip():
                found = got[0]
            pos = got[1]
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
    if m := re.fullmatch(rf"({_NUM})\s*(?:[eE]\s*([+-]?\d+)|(?:\\times|\\cdot|\*|×)\s*10\s*\^\s*\{{?\s*([+-]?\d+)\s*\}}?)", s):
        exp = int(m[2] or m[3])  # 1e3, 1.5 \times 10^{3}
        return _to_fraction(m[1]) * Fraction(10) ** exp if abs(exp) <= _MAX_EXP else None
    if m := re.fullmatch(r"(\d+)\s*\^\s*\{?\s*([+-]?\d+)\s*\}?", s):  # 2^{10}, 10^3
        base, exp = int(m[1]), int(m[2])
        small = base <= 1 or abs(exp) * math.log10(base) <= _MAX_EXP
        return Fraction(base) ** exp if small and (base or exp >= 0) else None
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
    s = re.sub(r"(?<![\d.])(\d*)\s*\\sqrt\{(\d+)\}", _simplify_sqrt, s)
    if (v := _to_fraction(s)) is not None:
        return str(v)  # Fraction prints "23" or "-3/4"
    if m := re.fullmatch(r"\(\s*([A-Z])\s*\)", s):
        return m[1]  # a multiple-choice letter: "(B)" -> "B"
    if m := re.fullmatch(r"([^/\s(),=+-]+)\s*/\s*([^/\s(),=+-]+)", s):
        s = "\\frac{%s}{%s}" % (m[1], m[2])  # "\pi/2" -> "\frac{\pi}{2}", as _clean_latex writes it
    # spaces go, except between two digits: "1 2" must not become 12
    return re.sub(r"\s+", lambda m: " " if 0 < m.start() and m.end() < len(s)
                  and s[m.start() - 1].isdigit() and s[m.end()].isdigit() else "", s)


def _simplify_sqrt(m: re.Match) -> str:
    """"k\\sqrt{n}" with the square factors of n taken out: \\sqrt{8} -> 2\\sqrt{2}, \\sqrt{4} -> 2."""
    k, n = int(m[1] or 1), int(m[2])
    if n > 10**8:  # factoring stays cheap; bigger radicands compare as written
        return m[0]
    f = math.isqrt(n)
    while f > 1 and n % (f * f):
        f -= 1
    k, n = k * f, n // (f * f)
    return str(k) if n == 1 else ("" if k == 1 else str(k)) + "\\sqrt{%d}" % n


_NUMBER = re.compile(r"-?\d+(?:/\d+)?")  # normalize_answer's form of an exact number


def is_equiv(pred: str | None, gold: str, backend: str = "fast") -> bool:
    """True if ``pred`` and ``gold`` normalise to the same non-empty canonical form.

    backend "math-verify" (``--grader math-verify``; pip install math-verify) also asks math-verify
    (symbolic, via sympy) when the fast check says no -- but never for a gold answer that is an
    exact number (AIME's integers): there the fast grader is exact, and faster."""
    a, b = normalize_answer(pred), normalize_answer(gold)
    if a and a == b or _rounded_equal(pred, a, gold):
        return True
    if backend == "fast" or not a or not b or _NUMBER.fullmatch(b):
        return False
    return _math_verify(str(pred), str(gold))


_ROUNDED = re.compile(r"[+-]?\d*\.(\d{4,})")  # a decimal of 4+ places: maybe a rounded fraction


def _rounded_equal(pred: str | None, pred_norm: str, gold: str) -> bool:
    """A gold answer that is a fraction rounded to 4+ decimals (MAWPS writes 2/3 as 0.6666666667
    and 10/3 as 3.33333) equals a predicted number that rounds to it: exactly (2/3), or a decimal
    as precise as it is written, 3 places at least (0.667 yes, 0.67 no). An exact decimal gold
    (0.015625 = 1/64) keeps exact comparison. Found on the real MAWPS file (docs/data.md)."""
    m = _ROUNDED.fullmatch(str(gold).strip())
    if not m or not pred_norm or (value := _to_fraction(pred_norm)) is None:
        return False
    gold_value, digits = Fraction(str(gold).strip()), len(m[1])
    near = gold_value.limit_denominator(1000)
    if near == gold_value or abs(near - gold_value) > Fraction(1, 2 * 10 ** digits):
        return False  # an exact decimal, or no short fraction it is the rounding of
    written = re.findall(r"\d\.(\d+)", str(pred))
    if len(written) == 1:  # a decimal prediction is as precise as it is written
        digits = min(digits, max(3, len(written[0])))
    return abs(value - gold_value) <= Fraction(1, 2 * 10 ** digits)


def _math_verify(pred: str, gold: str) -> bool:
    """math-verify's verdict on two bare answers (imported here: an optional extra)."""
    import threading
    try:
        from math_verify import parse, verify
    except ImportError:
        raise ImportError("--grader math-verify needs the math-verify package: pip install math-verify") from None
    # its timeouts use signal.alarm, which works in the main thread only
    limit = 5 if threading.current_thread() is threading.main_thread() else None
    g = parse(f"${gold.strip().strip('$')}$", parsing_timeout=limit)
    p = parse(f"${pred.strip().strip('$')}$", parsing_timeout=limit)
    return bool(g and p and verify(g, p, timeout_seconds=limit))


def grade(action_text: str, gold: str, backend: str = "fast") -> bool:
    """Is the last boxed answer in ``action_text`` equivalent to ``gold``?"""
    return is_equiv(extract_boxed(action_text), gold, backend)
