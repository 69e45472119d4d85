"""Every number a user can type has a finite, sane range, checked before anything loads; a run's
config.json is type-checked when it is read back (issue 16)."""
import dataclasses
import json
import math
import typing

import pytest
import torch

import eval as evaluation
import train
from config import Above, Config, UserError, build_parser, load_config, parse_args, validate
from tests.test_bad_input import TINY, run_main

HINTS = typing.get_type_hints(Config)
NUMERIC = [f for f in dataclasses.fields(Config) if HINTS[f.name] in (int, float)]


def refused(name, value) -> str:
    with pytest.raises(UserError) as e:
        validate(dataclasses.replace(Config(), **{name: value}))
    return str(e.value)


def test_there_are_numeric_fields_and_each_has_a_finite_range_holding_its_default():
    assert len(NUMERIC) >= 30
    for f in NUMERIC:
        lo, hi = f.metadata["range"]
        assert math.isfinite(lo) and math.isfinite(hi) and lo < hi, f.name
        assert (f.default > lo if isinstance(lo, Above) else f.default >= lo) and f.default <= hi, f.name
    validate(Config())  # every default is in range


@pytest.mark.parametrize("f", NUMERIC, ids=lambda f: f.name)
def test_each_numeric_field_refuses_inf_nan_and_values_outside_its_range(f):
    lo, hi = f.metadata["range"]
    flag = "--" + f.name.replace("_", "-")
    below = float(lo) if isinstance(lo, Above) else lo - (1 if HINTS[f.name] is int else 1e-9 * max(1, abs(lo)))
    above = hi + 1 if HINTS[f.name] is int else hi * 1.001 + 1e-9
    bad = [below, above] + ([math.inf, -math.inf, math.nan, 1e300] if HINTS[f.name] is float else [10 ** 30])
    for value in bad:
        message = refused(f.name, HINTS[f.name](value) if HINTS[f.name] is int else value)
        assert message.startswith(flag + " must be ") and f"<= {hi:g}" in message, message
    for edge in ([] if isinstance(lo, Above) else [lo]) + [hi]:  # the bounds themselves are allowed
        validate(dataclasses.replace(Config(), **{f.name: HINTS[f.name](edge)}))


def test_the_help_shows_every_range():
    text = " ".join(build_parser().format_help().split())
    assert "> 0 and <= 1)" in text and ">= 0 and <= 2.14748e+09" in text  # --lr, --seed


@pytest.mark.parametrize("argv, message", [
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--lr", "inf"], "--lr must be > 0 and <= 1 (got inf)"),
    (["--warmup-steps", "-5"], "--warmup-steps must be >= 0"),
    (["--weight-decay", "-1"], "--weight-decay must be >= 0"),
    (["--code-timeout", "1e300"], "--code-timeout must be > 0 and <= 3600"),
    (["--code-memory-mb", "10000000000000"], "--code-memory-mb must be >= 64"),
    (["--coach-timeout", "inf"], "--coach-timeout must be > 0"),
    (["--problems-per-step", "1000000"], "--problems-per-step must be >= 1 and <= 1024"),
    (["--lora-r", "100000"], "--lora-r must be >= 1 and <= 1024"),
    (["--temperature", "nan"], "--temperature must be > 0"),
    (["--device", "banana"], "--device 'banana' is not a device"),
])
def test_bad_numbers_and_devices_are_one_line_before_anything_is_written(tmp_path, capsys, argv, message):
    err = run_main(train.main, TINY + argv + ["--out-dir", str(tmp_path / "run")], capsys)
    assert message in err
    assert not (tmp_path / "run").exists()


def test_a_cuda_device_on_a_machine_without_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:0"):
        with pytest.raises(UserError, match="0 CUDA device.*--device cpu"):
            parse_args(["--device", device])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parse_args(["--device", "cuda:1"]).device == "cuda:1"
    with pytest.raises(UserError, match="has 2 CUDA device"):
        parse_args(["--device", "cuda:2"])


@pytest.mark.parametrize("argv, message", [
    (["--temperature", "nan"], "--temperature must be >= 0 and <= 10"),
    (["--temperature", "inf"], "--temperature"),
    (["--k", "100000"], "--k must be >= 1 and <= 1024"),
    (["--seed", "-1"], "--seed must be >= 0"),
])
def test_eval_flags_have_ranges(tmp_path, capsys, argv, message):
    (tmp_path / "run" / "adapters").mkdir(parents=True)
    (tmp_path / "run" / "config.json").write_text(json.dumps({"task": "math", "model": "tiny"}))
    assert message in run_main(evaluation.main, [str(tmp_path / "run")] + argv, capsys)
    assert evaluation.parse_eval_args([str(tmp_path / "run"), "--temperature", "0"]).temperature == 0  # greedy


@pytest.mark.parametrize("content, message", [
    ({"steps": "3"}, "'steps' must be an integer, got str \"3\""),
    ({"steps": [3]}, "'steps' must be an integer, got list"),
    ({"steps": True}, "'steps' must be an integer, got bool"),
    ({"lr": "1e-3"}, "'lr' must be a number"),
    ({"model": 5}, "'model' must be a string"),
    ({"coach_sees_answer": "yes"}, "'coach_sees_answer' must be true or false"),
    ([1, 2], "a JSON object of settings, got list"),
    ('{"steps": ' + "9" * 5000 + "}", "not a valid run config"),
    (b'{"model": "\xff"}', "not a valid run config"),
])
def test_a_run_config_of_the_wrong_type_is_one_line(tmp_path, capsys, content, message):
    run = tmp_path / "run"
    run.mkdir()
    path = run / "config.json"
    path.write_bytes(content) if isinstance(content, bytes) else \
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(UserError, match="config.json") as e:
        load_config(run)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert message in run_main(train.main, ["--resume", str(run)], capsys)
    assert message in run_main(evaluation.main, [str(run)], capsys)


def test_a_good_run_config_loads_with_ints_for_floats_and_null_4bit(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"steps": 3, "lr": 1, "load_in_4bit": None, "old_field": 1}))
    cfg = load_config(tmp_path)
    assert cfg.steps == 3 and cfg.lr == 1 and cfg.load_in_4bit is None
