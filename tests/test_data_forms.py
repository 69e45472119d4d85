"""--data / --eval-data in the forms the `datasets` library reads: Parquet, CSV, save_to_disk
folders (Dataset and DatasetDict), folders of data files, and ./relative folder names."""
import pandas as pd
import pytest

from tasks import DataError, load_tasks
from tasks.problems import load_problems

ROWS = [{"id": "p0", "problem": "What is 2+3?", "answer": "5"},
        {"id": "p1", "problem": "What is 7*6?", "answer": "42"},
        {"id": "p2", "problem": "Find the remainder.", "answer": "023"}]


def _check(problems, ids=("p0", "p1", "p2")):
    assert [p.id for p in problems] == list(ids)
    assert [p.answer for p in problems] == [r["answer"] for r in ROWS if r["id"] in ids]
    assert problems[1].problem == "What is 7*6?"


def test_parquet_and_csv_files(tmp_path):
    pd.DataFrame(ROWS).to_parquet(tmp_path / "aime.parquet")
    _check(load_tasks("math", str(tmp_path / "aime.parquet"), "train"))
    (tmp_path / "aime.csv").write_text("id,problem,answer\np0,What is 2+3?,5\np1,What is 7*6?,42\n")
    probs = load_problems(str(tmp_path / "aime.csv"))
    assert [(p.id, p.answer, p.kind) for p in probs] == [("p0", "5", "aime"), ("p1", "42", "aime")]


def test_save_to_disk_folders_and_relative_names(tmp_path, monkeypatch):
    import datasets
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "one"))
    _check(load_problems(str(tmp_path / "one")))
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS[:2]),
                               "eval": datasets.Dataset.from_list(ROWS[2:])})
    dd.save_to_disk(str(tmp_path / "both"))
    assert [p.id for p in load_problems(str(tmp_path / "both"), "train")] == ["p0", "p1"]
    assert [p.id for p in load_problems(str(tmp_path / "both"), "eval")] == ["p2"]
    with pytest.raises(DataError, match="no split 'test' in this DatasetDict .it has train, eval."):
        load_problems(str(tmp_path / "both"), "test")
    monkeypatch.chdir(tmp_path)  # ./relative names, and a bare folder name that exists here
    _check(load_problems("./one"))
    assert [p.kind for p in load_problems("one")] == ["one"] * 3
    (tmp_path / "files").mkdir()  # a plain folder of data files: datasets' own folder loader
    pd.DataFrame(ROWS).to_json(tmp_path / "files" / "train.jsonl", orient="records", lines=True)
    _check(load_problems("./files"))


def test_unreadable_sources_are_one_line_errors(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    (tmp_path / "empty").mkdir()
    pd.DataFrame([{"question_text": "x", "answer": 1}]).to_parquet(tmp_path / "nofield.parquet")
    for source, needle in [(tmp_path / "bad.parquet", "could not read"), (tmp_path / "empty", "could not read"),
                           (tmp_path / "nofield.parquet", "row 0: no problem text"),
                           (tmp_path / "missing.csv", "not found")]:
        with pytest.raises(DataError) as e:
            load_problems(str(source))
        assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
