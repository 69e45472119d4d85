"""Tests for tasks.py: the grader (extract_boxed, normalize_answer, is_equiv, grade), the
arithmetic generator, the built-in splits, and the JSON/JSONL/Hub loader with its errors."""
import json
import os
import re
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import tasks  # noqa: E402
from tasks import (DataError, builtin_problems, extract_boxed, grade, is_equiv,  # noqa: E402
                   load_problems, make_arithmetic, normalize_answer)

# ----------------------------------------------------------------------------- grader
MUST_MATCH = [
    ("023", "23"), ("23", "023"), ("007", "7"),
    ("1,000", "1000"), ("1,000,000", "1000000"), ("1{,}000", "1000"), ("1\\,000", "1000"),
    ("0.50", "0.5"), ("2.0", "2"), (".5", "0.5"), ("5.", "5"),
    ("3/4", "\\frac{3}{4}"), ("\\dfrac34", "3/4"), ("\\tfrac{3}{4}", "0.75"), ("0.75", "3/4"),
    ("\\frac{6}{8}", "3/4"), ("\\frac34", "\\dfrac{3}{4}"),
    ("5\\text{ cm}", "5"), ("5 \\text{cm}", "5"), ("5\\mbox{ m}^2", "5"), ("\\text{5}", "5"),
    ("12\\text{ apples}", "12"), ("42 apples", "42"), ("336 degrees", "336"),
    ("336^\\circ", "336"), ("336^{\\circ}", "336"), ("336°", "336"), ("336^\\circ", "336^{\\circ}"),
    ("$5$", "5"), ("$$5$$", "5"), ("\\(5\\)", "5"), ("\\[5\\]", "5"), ("\\boxed{5}", "5"), ("{5}", "5"),
    ("\\left( 1, 2 \\right)", "(1,2)"), ("(1, 2)", "(1,2)"),
    (" 5 ", "5"), ("5.", "5"), ("x = 5", "5"), ("k=5", "5"), ("\\theta = 30^\\circ", "30"),
    ("-5", "-5"), ("−5", "-5"), ("- 5", "-5"), ("-\\frac{3}{4}", "-0.75"), ("\\frac{-3}{4}", "-3/4"),
    ("1\\!000", "1000"), ("3\\,\\text{cm}", "3"),
    ("50\\%", "50"), ("\\$5", "5"), ("+5", "5"),
    ("\\sqrt2", "\\sqrt{2}"), ("\\dfrac{\\sqrt3}{2}", "\\frac{\\sqrt{3}}{2}"), ("x^{2}", "x^2"),
    ("\\text{(A)}", "(A)"), ("2 x + 1", "2x+1"),
]

# "12" vs "1,2": a comma counts as a thousands separator only in groups of three, so "1,2" is a
# list/tuple-like string and never the number 12. Same for "1 2".
MUST_NOT_MATCH = [
    ("23", "230"), ("230", "23"), ("0.5", "5"), ("1/2", "2/1"), ("12", "1,2"), ("12", "1 2"),
    ("1000", "1001"), ("1,000", "1,001"), ("3", "3x"), ("3x", "3"), ("3 x", "3"), ("5", "five"),
    ("-5", "5"), ("2 pi", "2"), ("\\sqrt{2}", "1.414"), ("0.333", "1/3"), ("(1,2)", "(2,1)"),
    ("\\sqrt{2}", "\\sqrt{3}"), ("2/3", "0.67"), ("x=5", "6"), ("1", "-1"),
    ("", "5"), ("5", ""), ("", ""), (" ", " "), ("\\text{}", "5"), ("$$", "5"),
]


@pytest.mark.parametrize("pred,gold", MUST_MATCH)
def test_equivalent_answers_match(pred, gold):
    assert is_equiv(pred, gold)
    assert is_equiv(gold, pred), "equivalence must be symmetric"


@pytest.mark.parametrize("pred,gold", MUST_NOT_MATCH)
def test_different_answers_do_not_match(pred, gold):
    assert not is_equiv(pred, gold)


def test_none_prediction_never_matches():
    assert not is_equiv(None, "5")
    assert not is_equiv(None, "")
    assert normalize_answer(None) == ""


@pytest.mark.parametrize("raw,canon", [
    ("023", "23"), ("0.75", "3/4"), ("\\dfrac34", "3/4"), ("-0.50", "-1/2"), ("1,000", "1000"),
    ("12 345", "12345"), ("\\left( 1, 2 \\right)", "(1,2)"), ("1\\frac{1}{2}", "1\\frac{1}{2}"),
    ("\\frac{1}{0}", "\\frac{1}{0}"),
])
def test_normalize_answer_canonical_forms(raw, canon):
    # numbers become exact n or p/q; mixed numbers and division by zero stay strings
    assert normalize_answer(raw) == canon


@pytest.mark.parametrize("text,expected", [
    ("so the answer is \\boxed{42}.", "42"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
    ("first \\boxed{1} then \\boxed{2}", "2"),
    ("\\boxed{\\boxed{3}} and later \\boxed{4}", "4"),
    ("\\boxed{\\boxed{3}}", "\\boxed{3}"),
    ("\\fbox{7}", "7"),
    ("\\boxed{1} then \\fbox{8}", "8"),
    ("\\boxed {9}", "9"),
    ("$\\boxed 5$", "5"),
    ("\\boxed{\\{1,2\\}}", "\\{1,2\\}"),
    ("\\boxed{a} and a cut-off \\boxed{\\frac{1}{", "a"),
    ("\\boxed{}", ""),
    ("no box here: 42", None),
    ("\\boxedx{3}", None),
    ("", None),
])
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


def test_grade_uses_the_last_box():
    assert grade("maybe \\boxed{10}, no: \\boxed{023}", "23")
    assert not grade("\\boxed{23} hmm, actually \\boxed{24}", "23")
    assert not grade("the answer is 23", "23")
    assert grade("\\boxed{\\dfrac{3}{4}\\text{ cups}}", "0.75")


# ----------------------------------------------------------------------------- generator
def _recompute(steps):
    """Independent re-derivation of a generated answer; checks every step stays a positive
    integer and every division is exact."""
    assert steps[0][0] == "start"
    cur = steps[0][1]
    for op, *x in steps[1:]:
        if op == "buy":
            cur += x[0] * x[1]
        elif op == "get":
            cur += x[0]
        elif op == "give":
            cur -= x[0]
        elif op == "times":
            cur *= x[0]
        elif op in ("split", "share"):
            assert cur % x[0] == 0, f"remainder in {op} {x}"
            cur //= x[0]
        else:
            raise AssertionError(f"unknown op {op}")
        assert cur > 0
    return cur


def _check_generated(p):
    assert p.answer == str(_recompute(p.steps))
    assert int(p.answer) > 0
    n = len(p.steps) - 1
    assert p.kind == f"arithmetic-{n}step"
    for _, *nums in p.steps:  # every operand is stated in the text, in digits
        for v in nums:
            assert re.search(rf"\b{v}\b", p.problem), (v, p.problem)
    assert p.problem.endswith("?") and "boxed" not in p.problem
    assert sum(op == "share" for op, *_ in p.steps) <= 1 and all(
        op != "share" for op, *_ in p.steps[:-1]), "share only as the final step"


def test_generator_is_deterministic_and_seeded():
    a, b, c = make_arithmetic(40, seed=3), make_arithmetic(40, seed=3), make_arithmetic(40, seed=4)
    assert a == b
    assert [p.problem for p in a] != [p.problem for p in c]
    assert make_arithmetic(10, seed=3) == a[:10]  # prefix-stable
    assert len({p.problem for p in a}) == len(a)


def test_generated_answers_recompute_and_vary():
    probs = make_arithmetic(300, seed=11)
    for p in probs:
        _check_generated(p)
    assert {p.kind for p in probs} == {"arithmetic-2step", "arithmetic-3step", "arithmetic-4step"}
    assert {op for p in probs for op, *_ in p.steps[1:]} == {
        "buy", "get", "give", "times", "split", "share"}
    starts = [p.steps[0][1] for p in probs]
    assert min(starts) < 20 and max(starts) > 100  # small and large numbers
    first_words = {p.problem.split()[0] for p in probs}
    assert len(first_words) > 10  # names / templates vary


def test_generator_respects_step_bounds():
    probs = make_arithmetic(30, seed=5, min_steps=3, max_steps=3)
    assert all(len(p.steps) == 4 and p.kind == "arithmetic-3step" for p in probs)
    with pytest.raises(ValueError):
        make_arithmetic(3, seed=0, min_steps=4, max_steps=2)


# ----------------------------------------------------------------------------- builtin splits
def test_builtin_splits_are_disjoint_fixed_and_correct():
    train, evals = builtin_problems("train"), builtin_problems("eval")
    assert len(evals) == tasks.EVAL_SIZE and len(train) == tasks.TRAIN_SIZE
    assert not {p.problem for p in train} & {p.problem for p in evals}
    for p in train + evals:
        _check_generated(p)
    assert len({p.id for p in train + evals}) == len(train) + len(evals)
    assert builtin_problems("eval") == evals and builtin_problems("eval", 5) == evals[:5]
    assert builtin_problems("train", 50) == train[:50]
    assert load_problems("builtin", "eval", limit=7) == evals[:7]
    assert load_problems("builtin", "train", limit=7) == train[:7]


def test_builtin_split_same_in_a_fresh_process_with_other_hash_seed():
    code = ("import sys, hashlib; sys.path.insert(0, '.'); import tasks; "
            "print(hashlib.sha256(repr([(p.id, p.problem, p.answer) for s in ('train', 'eval') "
            "for p in tasks.builtin_problems(s, 100 if s == 'eval' else 300)]).encode()).hexdigest())")
    root = os.path.join(os.path.dirname(__file__), "..")
    digests = {subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout
               for seed in ("1", "2")}
    assert len(digests) == 1


def test_train_skips_eval_texts_even_when_the_streams_overlap(monkeypatch):
    # same seed for both streams: every eval problem shows up in the train stream and must be skipped
    monkeypatch.setattr(tasks, "TRAIN_SEED", tasks.EVAL_SEED)
    train = builtin_problems("train", 50)
    assert len(train) == 50
    assert not {p.problem for p in train} & {p.problem for p in builtin_problems("eval")}


def test_builtin_rejects_bad_split_and_size():
    with pytest.raises(ValueError, match="train"):
        builtin_problems("test")
    with pytest.raises(ValueError, match="eval"):
        builtin_problems("eval", tasks.EVAL_SIZE + 1)
    with pytest.raises(ValueError, match="limit"):
        load_problems("builtin", limit=0)


# ----------------------------------------------------------------------------- loading
AIME = [
    {"id": "2025-I-1", "problem": "Find the remainder when $N$ is divided by 1000.", "answer": "023"},
    {"problem": "How many ordered pairs are there?", "answer": 142.0},
    {"question": "Find the angle in degrees.", "answer": "336^\\circ"},
    {"prompt": "Compute the sum.", "answer": 23, "kind": "algebra"},
    {"problem": "Find the ratio.", "answer": 0.5, "id": 17},
]


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return str(path)


def _check_aime(probs, stem):
    assert [p.answer for p in probs] == ["023", "142", "336^\\circ", "23", "0.5"]
    assert [p.id for p in probs] == ["2025-I-1", f"{stem}-1", f"{stem}-2", f"{stem}-3", "17"]
    assert [p.kind for p in probs] == [stem, stem, stem, "algebra", stem]
    assert probs[2].problem == "Find the angle in degrees."
    assert probs[3].problem == "Compute the sum."
    assert grade("\\boxed{23}", probs[0].answer) and grade("\\boxed{336}", probs[2].answer)
    assert grade("\\boxed{142}", probs[1].answer) and grade("\\boxed{\\frac12}", probs[4].answer)


def test_load_json_list_and_problems_object(tmp_path):
    _check_aime(load_problems(_write(tmp_path / "aime.json", json.dumps(AIME, indent=2))), "aime")
    wrapped = _write(tmp_path / "aime25.json", json.dumps({"problems": AIME}))
    _check_aime(load_problems(wrapped), "aime25")
    assert len(load_problems(wrapped, limit=2)) == 2


def test_load_jsonl(tmp_path):
    text = "\n".join(json.dumps(r) for r in AIME[:3]) + "\n\n" + "\n".join(json.dumps(r) for r in AIME[3:])
    _check_aime(load_problems(_write(tmp_path / "amc.jsonl", text)), "amc")


def _error(source, **kw):
    with pytest.raises(DataError) as e:
        load_problems(source, **kw)
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


def test_missing_file(tmp_path):
    for name in ("nope.json", "nope.jsonl"):
        msg = _error(str(tmp_path / name))
        assert "not found" in msg and name in msg


def test_malformed_json_names_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.json", '[\n  {"problem": "a", "answer": 1},\n  {"problem": "b" "answer": 2}\n]')
    msg = _error(path)
    assert f"{path}:3" in msg and "malformed JSON" in msg


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.jsonl", '{"problem": "a", "answer": 1}\n{"problem": "b", \n')
    assert f"{path}:2" in _error(path)


@pytest.mark.parametrize("record,needle", [
    ({"answer": "5"}, "problem, prompt, question"),
    ({"text": "What is 2+2?", "answer": "4"}, "problem, prompt, question"),
    ({"problem": "What is 2+2?"}, "'answer'"),
    ({"problem": "What is 2+2?", "answer": None}, "'answer'"),
    ({"problem": "What is 2+2?", "answer": ""}, "empty"),
    ({"problem": "What is 2+2?", "answer": True}, "string or a number"),
    ({"problem": "", "answer": "4"}, "non-empty"),
    (["What is 2+2?", "4"], "JSON object"),
])
def test_bad_record_names_file_and_record(tmp_path, record, needle):
    good = {"problem": "What is 1+1?", "answer": "2"}
    path = _write(tmp_path / "p.json", json.dumps([good, record]))
    msg = _error(path)
    assert f"{path}: problems[1]" in msg and needle in msg
    path = _write(tmp_path / "p.jsonl", json.dumps(good) + "\n" + json.dumps(record) + "\n")
    msg = _error(path)
    assert f"{path}:2" in msg and needle in msg


@pytest.mark.parametrize("name,text", [
    ("empty.json", "[]"), ("empty2.json", '{"problems": []}'), ("empty.jsonl", "\n\n"),
])
def test_empty_dataset(tmp_path, name, text):
    assert "no problems" in _error(_write(tmp_path / name, text))


def test_wrong_top_level_and_duplicate_ids_and_file_type(tmp_path):
    assert "list" in _error(_write(tmp_path / "obj.json", '{"items": []}'))
    dup = [{"id": "a", "problem": "x", "answer": 1}, {"id": "a", "problem": "y", "answer": 2}]
    assert "duplicate id 'a'" in _error(_write(tmp_path / "dup.json", json.dumps(dup)))
    assert ".jsonl" in _error(_write(tmp_path / "p.csv", "problem,answer\nx,1\n"))


def test_unknown_source_fails_fast_and_clearly(monkeypatch):
    # The Hub is unreachable here and in CI; offline mode makes `datasets` fail at once. The flag
    # is read at import time, so patch the imported modules too.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for mod, attr in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE")):
        try:
            monkeypatch.setattr(__import__(mod, fromlist=["_"]), attr, True)
        except ImportError:
            pass  # without `datasets` the loader raises DataError too
    msg = _error("no-such-org/no-such-dataset-xyz", split="test")
    assert "no-such-org/no-such-dataset-xyz" in msg and ".json/.jsonl" in msg and "builtin" in msg
    msg = _error("not a dataset name!")  # neither a file nor a valid Hub id: no import needed
    assert "not a valid Hugging Face Hub dataset name" in msg and "builtin" in msg
    assert "not found" in _error("./missing/folder")
