"""Tests for tasks/problems.py: the arithmetic generator, the built-in splits, and the JSON/JSONL/Hub
loader with its errors."""
import json
import os
import re
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tasks import problems  # noqa: E402
from tasks.grader import grade  # noqa: E402
from tasks.problems import DataError, builtin_problems, load_problems, make_arithmetic  # noqa: E402

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
    assert len(evals) == problems.EVAL_SIZE and len(train) == problems.TRAIN_SIZE
    assert not {p.problem for p in train} & {p.problem for p in evals}
    for p in train + evals:
        _check_generated(p)
    assert len({p.id for p in train + evals}) == len(train) + len(evals)
    assert builtin_problems("eval") == evals and builtin_problems("eval", 5) == evals[:5]
    assert builtin_problems("train", 50) == train[:50]
    assert load_problems("builtin", "eval", limit=7) == evals[:7]
    assert load_problems("builtin", "train", limit=7) == train[:7]


def test_builtin_split_same_in_a_fresh_process_with_other_hash_seed():
    code = ("import sys, hashlib; sys.path.insert(0, '.'); from tasks import problems; "
            "print(hashlib.sha256(repr([(p.id, p.problem, p.answer) for s in ('train', 'eval') "
            "for p in problems.builtin_problems(s, 100 if s == 'eval' else 300)]).encode()).hexdigest())")
    root = os.path.join(os.path.dirname(__file__), "..")
    digests = {subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                              env={**os.environ, "PYTHONHASHSEED": seed}, check=True).stdout
               for seed in ("1", "2")}
    assert len(digests) == 1


def test_train_skips_eval_texts_even_when_the_streams_overlap(monkeypatch):
    # same seed for both streams: every eval problem shows up in the train stream and must be skipped
    monkeypatch.setattr(problems, "TRAIN_SEED", problems.EVAL_SEED)
    train = builtin_problems("train", 50)
    assert len(train) == 50
    assert not {p.problem for p in train} & {p.problem for p in builtin_problems("eval")}


def test_builtin_rejects_bad_split_and_size():
    with pytest.raises(ValueError, match="train"):
        builtin_problems("test")
    with pytest.raises(ValueError, match="eval"):
        builtin_problems("eval", problems.EVAL_SIZE + 1)
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
    assert ".jsonl" in _error(_write(tmp_path / "p.txt", "problem,answer\nx,1\n"))


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
