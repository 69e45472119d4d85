"""Files a user hands in (problems, task folders, metrics to plot) that used to be tracebacks: one
line, exit 2 (issue 16)."""
import json

import pytest

import eval as evaluation
import train
import viewer
from tasks import DataError
from tasks import tabular as tb
from tests.test_bad_input import TINY, run_main
from tests.test_tabular import _write_folder


@pytest.mark.parametrize("suffix, text", [
    (".json", '[{"problem": "Big?", "answer": ' + "7" * 5000 + "}]"),
    (".jsonl", '{"problem": "1+1?", "answer": 2}\n{"problem": "Big?", "answer": ' + "7" * 5000 + "}\n"),
], ids=["json", "jsonl"])
def test_a_5000_digit_integer_answer_is_one_line(tmp_path, capsys, suffix, text):
    data = tmp_path / f"big{suffix}"
    data.write_text(text)
    err = run_main(train.main, TINY + ["--data", str(data), "--out-dir", str(tmp_path / "run")], capsys)
    assert data.name in err and "digits" in err and "as a string" in err
    assert (":2:" in err) == (suffix == ".jsonl")  # the line, where there are lines
    assert not (tmp_path / "run").exists()


def test_a_5000_digit_integer_answer_from_a_hub_row_is_one_line():
    from tasks.formats import answer_str  # where every row's gold answer becomes a string (issue 27)
    with pytest.raises(DataError, match="row 3: 'answer' a number has more than"):
        answer_str(7 ** 6000, "hub [train] row 3")
    assert answer_str("7" * 5000, "w") == "7" * 5000


@pytest.mark.parametrize("name", ["description.md", "task.json"])
def test_a_task_folder_file_that_is_not_utf8_is_one_line(tmp_path, capsys, name):
    folder = tmp_path / "tasks" / "task_a"
    _write_folder(tb.make_tabular_tasks(1, seed=5)[0], folder)
    (folder / name).write_bytes((folder / name).read_bytes() + b"\n\xff\xfe caf\xe9\n")
    with pytest.raises(DataError, match="not UTF-8") as e:
        tb.load_task_folder(tmp_path / "tasks")
    assert name in str(e.value) and "\n" not in str(e.value)
    err = run_main(train.main, TINY + ["--task", "data", "--data", str(tmp_path / "tasks"),
                                       "--out-dir", str(tmp_path / "run")], capsys)
    assert name in err and "save it as UTF-8" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("line, message", [
    ("3", "expected a JSON object per line, got int"),
    ('"step 1"', "expected a JSON object per line, got str"),
    ("[1, 2]", "expected a JSON object per line, got list"),
    ("9" * 5000, "malformed JSON"),
    ('{"no_step": 1}', 'no integer "step"'),
], ids=["int", "str", "list", "5000-digits", "no-step"])
def test_plot_and_show_on_lines_that_are_not_records(tmp_path, capsys, line, message):
    run = tmp_path / "run"
    run.mkdir()
    good = json.dumps({"step": 1, "solver/reward_mean": 0.5, "episode/accuracy": 0.0})
    (run / "metrics.jsonl").write_text(good + "\n" + line + "\n")
    (run / "samples.jsonl").write_text(json.dumps({"step": 1, "task": {"id": "t"}, "actions": []}) + "\n" + line + "\n")
    err = run_main(evaluation.main, ["plot", str(run), "--out", str(tmp_path / "c.png")], capsys)
    assert message in err and "metrics.jsonl" in err
    assert not (tmp_path / "c.png").exists()
    if "step" not in message:  # show does not need a step on every line
        err = run_main(evaluation.main, ["show", str(run)], capsys)
        assert message in err and "samples.jsonl:2" in err


def test_a_metrics_file_that_is_not_utf8(tmp_path):
    (tmp_path / "metrics.jsonl").write_bytes(b'{"step": 1}\n\xff\n')
    with pytest.raises(viewer.UserError, match="not UTF-8"):
        viewer.read_jsonl(tmp_path / "metrics.jsonl")
