"""Bad input gets one clear line on stderr, exit code 2, no traceback, and nothing written."""
import json

import pytest

import eval as evaluation
import train


def run_main(main, argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err


TINY = ["--preset", "tiny", "--steps", "1"]


@pytest.mark.parametrize("content, suffix, message", [
    (None, ".json", "not found"),
    ('[{"problem": "1+1?", "answer": "2"},\n {"problem": "2+2?", "answer": }]', ".json", ":2"),
    ('{"problem": "1+1?", "answer": "2"}\n{"problem": "2+2?" "answer": "4"}\n', ".jsonl", ":2"),
    ('[{"problem": "1+1?", "answer": "2"}, {"problem": "2+2?"}]', ".json", "answer"),
    ('[{"text": "1+1?", "answer": "2"}]', ".json", "problem"),
    ("[]", ".json", "no problems found"),
    ("", ".jsonl", "no problems found"),
])
def test_bad_problem_files(tmp_path, capsys, content, suffix, message):
    data = tmp_path / f"problems{suffix}"
    if content is not None:
        data.write_text(content)
    err = run_main(train.main, TINY + ["--data", str(data), "--out-dir", str(tmp_path / "run")], capsys)
    assert message in err and data.name in err
    assert not (tmp_path / "run").exists()


def test_model_that_cannot_be_loaded_offline(tmp_path, capsys):
    err = run_main(train.main, TINY + ["--model", "no-such-org/no-such-model", "--out-dir", str(tmp_path / "run")], capsys)
    assert "no-such-org/no-such-model" in err and "--preset tiny" in err
    assert not (tmp_path / "run").exists()


def test_missing_model_folder(tmp_path, capsys):
    err = run_main(train.main, TINY + ["--model", str(tmp_path / "nope"), "--out-dir", str(tmp_path / "run")], capsys)
    assert "does not exist" in err


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--steps", "two"], "invalid int value"),
    (["--coach", "oracle"], "invalid choice"),
    (["--outcome-weight", "1.5"], "--outcome-weight"),
    (["--micro-batch-size", "0"], "--micro-batch-size must be >= 1"),
    (["--load-in-4bit", "yes"], "unrecognized arguments"),
])
def test_bad_values(tmp_path, capsys, argv, message):
    assert message in run_main(train.main, TINY + argv + ["--out-dir", str(tmp_path / "run")], capsys)


def test_math_verify_grader_without_the_package_names_the_install(tmp_path, capsys, monkeypatch):
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "math_verify" else find_spec(name, *a))
    err = run_main(train.main, TINY + ["--grader", "math-verify", "--out-dir", str(tmp_path / "run")], capsys)
    assert "pip install math-verify" in err and not (tmp_path / "run").exists()


def test_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    assert "not a run folder" in run_main(train.main, ["--resume", str(tmp_path / "photos")], capsys)
    assert "not a run folder" in run_main(train.main, ["--resume", str(tmp_path / "missing")], capsys)


def test_resume_of_a_run_without_a_checkpoint(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"task": "math"}))
    assert "no checkpoint" in run_main(train.main, ["--resume", str(tmp_path / "run")], capsys)


@pytest.mark.parametrize("argv, message", [
    (["{missing}"], "not a run folder"),
    (["{notrun}"], "not a run folder"),
    (["{run}"], "no trained adapters"),
    (["{run}", "--k", "0"], "--k"),
    (["{run}", "--frobnicate"], "unrecognized arguments"),
])
def test_eval_bad_input(tmp_path, capsys, argv, message):
    (tmp_path / "notrun").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(json.dumps({"task": "math", "model": "tiny"}))
    argv = [a.format(missing=tmp_path / "missing", notrun=tmp_path / "notrun", run=tmp_path / "run") for a in argv]
    assert message in run_main(evaluation.main, argv, capsys)
