"""The real command lines, as a user runs them: train the tiny preset, then evaluate the run."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT


def run(*args, timeout=300, cwd=ROOT):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    proc = run("train.py", "--task", "math", "--preset", "tiny", "--steps", "2", "--out-dir", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, proc


def test_tiny_training_run_writes_a_complete_run_folder(tiny_run):
    out, proc = tiny_run
    assert "step 2" in proc.stdout and "solver" in proc.stdout and "unscored" in proc.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "tiny" and config["steps"] == 2 and config["preset"] == "tiny"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    for key in ("episode/accuracy", "solver/reward_mean", "solver/unscored", "executor/kl", "verifier/length",
                "executor/tool_use", "time/step"):
        assert key in lines[0], key
    assert (out / "samples.jsonl").read_text().count("\n") == 2 * config["log_samples"]


def readme_metric_rows() -> list[tuple[list[str], str]]:
    """(keys, when logged) of each row of the metric table of docs/runs.md."""
    section = (ROOT / "docs" / "runs.md").read_text().split("Metric keys in metrics.jsonl", 1)[1].split("\n## ", 1)[0]
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| `")]
    return [(re.findall(r"`([^`]+)`", cells[0]), cells[1].strip()) for cells in rows]


def test_the_metric_table_in_docs_is_exactly_what_a_run_logs(tiny_run):
    """Every key of the table is in a tiny (math, process reward) run's metrics.jsonl, and every key
    there is in the table; data/ and eval/ rows are prefixes (other runs), checked as such."""
    from agents import MATH
    out, _ = tiny_run
    strict = lambda constant: pytest.fail(f"bare {constant} in metrics.jsonl")  # noqa: E731
    lines = [json.loads(line, parse_constant=strict) for line in (out / "metrics.jsonl").read_text().splitlines()]
    emitted = set().union(*lines)
    want, prefixes = set(), []
    for keys, when in readme_metric_rows():
        for key in keys:
            if key.endswith("/<key>"):
                prefixes.append(key[:-len("<key>")])
                continue
            agents = [a for a in MATH if a.uses_code] if when == "code agents" else MATH
            want |= {key.replace("<a>", a.name) for a in agents} if "<a>" in key else {key}
    assert prefixes == ["data/", "eval/"]
    assert want - emitted == set(), "in docs/runs.md's table but never logged"
    assert {k for k in emitted - want if not k.startswith(tuple(prefixes))} == set(), "logged but not in the table"


def test_saved_adapters_load_with_plain_peft(tiny_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from models import tiny
    out, _ = tiny_run
    for agent in ("solver", "executor", "verifier"):
        base = AutoModelForCausalLM.from_pretrained(tiny.ensure_tiny_model("tiny"))
        model = PeftModel.from_pretrained(base, out / "adapters" / agent)
        lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
        assert lora_b and any(p.abs().sum() > 0 for p in lora_b), f"{agent}'s adapter was never trained"


def test_eval_prints_a_table_and_writes_eval_json(tiny_run, tmp_path):
    out, _ = tiny_run
    # config.json keeps the name "tiny" (rebuilt or found in the cache at load); the adapters point
    # at the built folder by its absolute path, so eval runs from any folder
    assert json.loads((out / "config.json").read_text())["model"] == "tiny"
    base = json.loads((out / "adapters" / "solver" / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base.startswith("/") and (Path(base) / "config.json").is_file()
    proc = run(str(ROOT / "eval.py"), str(out), "--k", "2", "--limit", "3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "avg@2" in proc.stdout and "pass@2" in proc.stdout and "executor/tool_use" in proc.stdout
    result = json.loads((out / "eval.json").read_text())
    assert result["summary"]["tasks"] == 3 and result["summary"]["episodes"] == 6
    assert 0 <= result["summary"]["avg@2"] <= 1


@pytest.mark.parametrize("args, message", [
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--lr", "abc"], "invalid float value"),
    (["--lr", "-1"], "--lr must be > 0"),
    (["--temperature", "-0.5"], "--temperature must be > 0"),
    (["--temperature", "0"], "--temperature must be > 0"),
    (["--task", "chess"], "invalid choice"),
])
def test_bad_flags_fail_with_one_line_and_exit_code_2(args, message, tmp_path):
    proc = run("train.py", "--out-dir", str(tmp_path / "r"), *args)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "r").exists()


def test_eval_base_vs_run_on_an_aime_file_then_show_and_plot(tiny_run, tmp_path, capsys):
    import eval as evaluation
    out, _ = tiny_run
    proc = run("eval.py", str(out), "--base", "--data", "examples/aime-sample.json", "--k", "1", "--limit", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    data, head = proc.stdout.splitlines()[0], proc.stdout.splitlines()[1].split()
    assert data.startswith("data examples/aime-sample.json: plain (problem -> answer), 5 rows; e.g. ")  # issue 27
    assert head == ["metric", "base", out.name, "Δ", out.name]
    for key in ("pass@1", "format/boxed", "coach/judge_auc", "verifier/score_mean", "aime-sample/accuracy"):
        assert key in proc.stdout, key
    base = json.loads((out / "eval-base.json").read_text())
    assert base["settings"]["base"] and base["summary"]["episodes"] == 2
    saved = [json.loads(line) for line in (out / "eval-base-episodes.jsonl").read_text().splitlines()]
    assert [r["task"]["id"] for r in saved] == ["sample-1", "sample-2"]
    capsys.readouterr()
    evaluation.main(["show", str(out), "--eval", "--task", "sample-2", "--width", "100"])
    shown = capsys.readouterr().out
    assert "task sample-2" in shown and "gold '023'" in shown and "verifier · action 1 · coach" in shown
    evaluation.main(["plot", str(out), "--out", str(tmp_path / "curves.png")])
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit) as e:
        evaluation.main(["show", str(out), "--step", "99"])
    assert e.value.code == 2 and "no saved episode for step 99" in capsys.readouterr().err
