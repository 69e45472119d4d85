"""Math sets as they are published (issue 27): every shape loads with the right gold answers from
every source form (.json, .jsonl, .parquet, .csv, a saved dataset, the Hub), the user's field flags
read anything else, and whatever cannot be read is refused in one line, never guessed."""
import json

import pandas as pd
import pytest

from tasks import DataError, load_tasks
from tasks.formats import FieldSpec, drop_thousands, looks_worked
from tasks.grader import is_equiv
from tasks.problems import load_problems, parse_source
from tests.fixtures.math_sets import EXPECTED, GSM8K, MATH, MAWPS, SVAMP


def write(tmp_path, rows, form: str) -> str:
    """The rows as one source of ``form``; returns what --data takes."""
    if form == "json":
        (tmp_path / "set.json").write_text(json.dumps(rows), encoding="utf-8")
        return str(tmp_path / "set.json")
    if form == "jsonl":
        (tmp_path / "set.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return str(tmp_path / "set.jsonl")
    if form == "parquet":
        pd.DataFrame(rows).to_parquet(tmp_path / "set.parquet")
        return str(tmp_path / "set.parquet")
    if form == "csv":
        pd.DataFrame(rows).to_csv(tmp_path / "set.csv", index=False)
        return str(tmp_path / "set.csv")
    import datasets  # a saved folder: what the Hub gives, offline
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "set"))
    return str(tmp_path / "set")


@pytest.mark.parametrize("form", ["json", "jsonl", "parquet", "csv", "saved"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_shape_loads_from_every_form(tmp_path, name, form):
    shape, rows, want = EXPECTED[name]
    problems = load_problems(write(tmp_path, rows, form))
    assert [p.problem for p in problems] == [text for text, _ in want]
    if form == "csv":  # a CSV reader types its columns: AIME's "023" comes back as 23, still equal
        assert all(is_equiv(p.answer, gold) for p, (_, gold) in zip(problems, want))
    else:
        assert [p.answer for p in problems] == [gold for _, gold in want]
    assert problems.summary.startswith(f"data {tmp_path}") and f" {shape} (" in problems.summary
    assert f"{len(want)} rows" in problems.summary and "\n" not in problems.summary


def test_summary_line_names_the_fields_the_rule_and_one_example(tmp_path):
    cases = {"gsm8k": "gsm8k (question -> answer after ####), 3 rows; e.g. \"Janet has 16 eggs and eats 3. How many are left?\" -> 18",
             "math": "math (problem -> solution's last \\boxed{}), 3 rows; e.g. \"What is $\\frac{2}{4}$ in lowest terms?\" -> \\frac{1}{2}",
             "mawps": "mawps (input -> target), 3 rows; e.g. \"Joan found 70 seashells. She gave Sam some. She has 27 le...\" -> 43",
             "svamp": "svamp (Body + Question -> Answer), 2 rows"}
    for name, text in cases.items():
        (tmp_path / name).mkdir()
        assert text in load_problems(write(tmp_path / name, EXPECTED[name][1], "jsonl")).summary


def test_ids_and_kinds_come_from_the_rows_own_fields(tmp_path):
    mawps = load_problems(write(tmp_path, MAWPS, "jsonl"))
    assert [(p.id, p.kind) for p in mawps] == [("set-0", "singleeq"), ("set-289", "addsub"), ("set-206", "singleeq")]
    svamp = load_problems(write(tmp_path, SVAMP, "json"))
    assert [(p.id, p.kind) for p in svamp] == [("chal-1", "Subtraction"), ("chal-2", "Addition")]
    math = load_problems(write(tmp_path, MATH, "parquet"))
    assert [p.kind for p in math] == ["Prealgebra", "Algebra", "Prealgebra"]
    gsm = load_problems(write(tmp_path, GSM8K, "csv"))
    assert [(p.id, p.kind) for p in gsm] == [("set-0", "set"), ("set-1", "set"), ("set-2", "set")]


# ----------------------------------------------------------------------------- the Hub, offline
def test_hub_name_config_and_split(monkeypatch):
    import datasets
    calls = []

    def fake_load(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_list(GSM8K)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    got = load_problems("openai/gsm8k:main@test")
    assert calls[-1] == ("openai/gsm8k", "main", "test") and [p.answer for p in got] == ["18", "1000", "-3"]
    assert got.summary.startswith("data openai/gsm8k:main@test: gsm8k (question -> answer after ####), 3 rows")
    load_tasks("math", "openai/gsm8k:main", "train")
    assert calls[-1] == ("openai/gsm8k", "main", "train")
    load_problems("HuggingFaceH4/MATH-500@test", split="train")  # the name's split wins
    assert calls[-1] == ("HuggingFaceH4/MATH-500", None, "test")
    assert parse_source("openai/gsm8k") == ("openai/gsm8k", None, None)


def test_a_saved_dataset_dict_split_by_name(tmp_path, monkeypatch):
    import datasets
    datasets.DatasetDict({"train": datasets.Dataset.from_list(GSM8K[:2]),
                          "test": datasets.Dataset.from_list(GSM8K[2:])}).save_to_disk(str(tmp_path / "gsm8k"))
    assert [p.answer for p in load_problems(f"{tmp_path}/gsm8k@test")] == ["-3"]
    assert [p.answer for p in load_problems(f"{tmp_path}/gsm8k", split="train")] == ["18", "1000"]
    monkeypatch.chdir(tmp_path)
    assert [p.answer for p in load_problems("./gsm8k@test")] == ["-3"]


# ----------------------------------------------------------------------------- the user's flags
def test_fields_named_by_flags(tmp_path):
    rows = [{"q": "What is 2+3?", "worked": "2 + 3 = 5\n#### 5", "note": "x"},
            {"q": "What is 4*5?", "worked": "4 * 5 = 20\n#### 20", "note": "y"}]
    got = load_problems(write(tmp_path, rows, "jsonl"), fields=FieldSpec("q", "worked"))
    assert [(p.problem, p.answer) for p in got] == [("What is 2+3?", "5"), ("What is 4*5?", "20")]
    assert "fields (q -> worked after ####)" in got.summary
    joined = load_problems(write(tmp_path, rows, "json"), fields=FieldSpec("q+note", "worked", "gsm8k"))
    assert joined[1].problem == "What is 4*5? y"
    boxed = [{"text": "Half of 1?", "sol": "It is \\boxed{\\frac{1}{2}}."}]
    assert load_problems(write(tmp_path, boxed, "json"), fields=FieldSpec("text", "sol", "boxed"))[0].answer == "\\frac{1}{2}"


def test_plain_format_takes_a_long_answer_the_user_vouched_for(tmp_path):
    rows = [{"problem": "Describe the set.", "answer": "the set of all x such that " + "x > 0 and " * 12 + "x < 1"}]
    path = write(tmp_path, rows, "json")
    with pytest.raises(DataError, match="looks like a worked solution"):
        load_problems(path)
    assert load_problems(path, fields=FieldSpec(answer_format="plain"))[0].answer == rows[0]["answer"]


def test_train_and_eval_flags(tmp_path):
    import eval as evaluation
    from config import Config, parse_args
    cfg = parse_args(["--problem-field", "Body+Question", "--answer-field", "Answer", "--answer-format", "plain"])
    assert FieldSpec.of(cfg) == FieldSpec("Body+Question", "Answer", "plain")
    with pytest.raises(Exception, match="invalid choice"):
        parse_args(["--answer-format", "guess"])
    run = tmp_path / "run"
    run.mkdir()
    args = evaluation.parse_eval_args([str(run)])  # the run's own --eval-data: the run's flags
    assert evaluation.eval_fields(cfg, args) == FieldSpec("Body+Question", "Answer", "plain")
    args = evaluation.parse_eval_args([str(run), "--data", "x.jsonl", "--answer-format", "boxed"])
    assert evaluation.eval_fields(cfg, args) == FieldSpec("", "", "boxed")  # another set: this command's
    assert evaluation.eval_fields(Config(), evaluation.parse_eval_args([str(run)])) == FieldSpec()


# ----------------------------------------------------------------------------- refusals
def refusal(tmp_path, rows, form="jsonl", **spec) -> str:
    with pytest.raises(DataError) as e:
        load_problems(write(tmp_path, rows, form), fields=FieldSpec(**spec))
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


@pytest.mark.parametrize("rows,spec,needles", [
    # a worked solution no rule reads: refused, with the flag that would read it
    ([{"question": "Q?", "answer": "First 2 + 3 = 5.\nThen 5 * 2 = 10.\nSo 10."}], {},
     ["set.jsonl:1", "'answer' looks like a worked solution", "3 lines", "--answer-format plain"]),
    ([{"question": "Q?", "answer": "x\nSo it is \\boxed{10}."}], {}, ["worked solution", "--answer-format boxed"]),
    ([{"problem": "Q?", "answer": "We add the numbers one by one and carry the tens, which gives the total after all the steps are done: 10"}],
     {}, ["worked solution", "(104 chars, 1 line)"]),
    # the rule named, and the row does not hold what it reads
    ([{"question": "Q?", "answer": "it is 5"}], {"answer_format": "gsm8k"}, ["no '#### <answer>' line"]),
    ([{"problem": "Q?", "solution": "It is 5."}], {}, ["'solution' has no complete \\boxed{...}", "--answer-field"]),
    ([{"problem": "Q?", "answer": 5}], {"answer_format": "boxed"}, ["must be text", "--answer-format plain"]),
    ([{"question": "Q?", "answer": "a\n#### "}], {}, ["no '#### <answer>' line"]),
    # fields it cannot tell or the user named wrong: the fields it saw, the flags to use
    ([{"text": "Q?", "label": "5"}], {}, ["no problem text among fields text, label", "--problem-field FIELD"]),
    ([{"problem": "Q?", "label": "5"}], {}, ["no 'answer' field (nor target, solution) among fields problem, label",
                                            "--answer-field FIELD"]),
    ([{"problem": "Q?", "answer": "5"}], {"problem_field": "prompt"}, ["no field 'prompt' (--problem-field)",
                                                                      "fields problem, answer"]),
    ([{"problem": "Q?", "answer": "5"}], {"answer_field": "gold"}, ["no field 'gold' (--answer-field)"]),
    ([{"Body": "Dan has 3.", "Question": "", "Answer": 3.0}], {}, ["field 'Question' must be a non-empty string"]),
    ([{"input": "Q?", "target": float("nan")}], {}, ["'target' is nan"]),
])
def test_refusals_are_one_line_and_name_the_fix(tmp_path, rows, spec, needles):
    msg = refusal(tmp_path, rows, **spec)
    assert all(n in msg for n in needles), msg


def test_a_later_row_that_does_not_fit_is_refused_with_its_place(tmp_path):
    rows = GSM8K[:2] + [{"question": "Q?", "answer": "First 2 + 3 = 5.\nSo the answer is 5."}]
    assert "set.jsonl:3: 'answer' looks like a worked solution" in refusal(tmp_path, rows)
    assert "row 2" in refusal(tmp_path, rows, form="parquet")


def test_config_and_split_suffixes_on_local_sources_are_refused(tmp_path):
    path = write(tmp_path, GSM8K, "jsonl")
    with pytest.raises(DataError, match="a file is one split; drop '@test'"):
        load_problems(path + "@test")
    with pytest.raises(DataError, match="names a config of a Hub dataset"):
        load_problems(path + ":main")


def test_train_refuses_a_worked_solution_in_one_line_exit_2(tmp_path, capsys):
    import train
    path = tmp_path / "worked.json"
    path.write_text(json.dumps([{"question": "Q?", "answer": "2 + 3 = 5\nso 5"}]))
    with pytest.raises(SystemExit) as e:
        train.main(["--preset", "tiny", "--steps", "1", "--data", str(path), "--out-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "--answer-format" in err, err
    assert not (tmp_path / "run").exists()


def test_train_and_eval_print_one_data_line(tmp_path, capsys):
    import eval as evaluation
    import train
    from config import Config
    path = write(tmp_path, GSM8K, "jsonl")
    with pytest.raises(SystemExit):  # the model is missing: the data line came first, on stdout
        train.main(["--preset", "tiny", "--steps", "1", "--data", path, "--model", str(tmp_path / "nope"),
                    "--out-dir", str(tmp_path / "run")])
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"data {path}: gsm8k (question -> answer after ####), 3 rows; e.g. "
                   "\"Janet has 16 eggs and eats 3. How many are left?\" -> 18"]
    (tmp_path / "r").mkdir()
    cfg = Config(eval_data=path, device="cpu")
    args = evaluation.parse_eval_args([str(tmp_path / "r"), "--no-coach"])
    evaluation.check_columns([("r", tmp_path / "r", cfg, False), ("base", tmp_path / "r", cfg, True)], args)
    assert capsys.readouterr().out == out[0] + "\n"  # once per set, not per column


def test_helpers():
    assert drop_thousands("1,450,000") == "1450000" and drop_thousands("1,000.5") == "1000.5"
    assert drop_thousands("(1, 2)") == "(1, 2)" and drop_thousands("1,2") == "1,2"
    assert looks_worked("a\nb") and looks_worked("x" * 101) and not looks_worked("\\frac{1}{2}")


def test_math_rows_mix_an_answer_field_and_a_boxed_solution(tmp_path):
    rows = [{"problem": "A?", "solution": "so \\boxed{3}", "answer": "3"},
            {"problem": "B?", "solution": "so \\boxed{\\frac{1}{2}} and then \\boxed{\\{1,2\\}}", "answer": None}]
    got = load_problems(write(tmp_path, rows, "json"))
    assert [p.answer for p in got] == ["3", "\\{1,2\\}"] and "math (problem -> answer)" in got.summary


def test_an_error_line_names_at_most_twelve_fields(tmp_path):
    msg = refusal(tmp_path, [{f"column{i}": "x" for i in range(40)}], form="json")
    assert "column11 (+28 more)" in msg and "column12" not in msg
