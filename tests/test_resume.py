"""Never lose a run: atomic checkpoints, exact resume after SIGKILL, faults that do not stop a run."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import checkpoint
import train
from config import PRESETS, Config
from tests.conftest import ROOT

AGENTS = ("solver", "executor", "verifier")
SMALL = ["--preset", "tiny", "--steps", "4", "--save-every", "1", "--problems-per-step", "2",
         "--samples-per-problem", "2", "--max-new-tokens", "24", "--log-samples", "1"]


def adapters(run_dir):
    return {a: load_file(str(run_dir / "adapters" / a / "adapter_model.safetensors")) for a in AGENTS}


def steps(run_dir):
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_sigkill_then_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    cmd = [sys.executable, "train.py"]
    a = subprocess.Popen(cmd + SMALL + ["--out-dir", str(whole)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    b = subprocess.Popen(cmd + SMALL + ["--out-dir", str(killed)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 900
    while not (killed / "checkpoints" / "step_000002").exists() and b.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    b.send_signal(signal.SIGKILL)
    assert b.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert a.wait(timeout=900) == 0, a.stderr.read().decode()[-2000:]
    killed_at = checkpoint.checkpoints(killed)[-1].name
    assert killed_at in ("step_000002", "step_000003")
    resumed = subprocess.run(cmd + ["--resume", str(killed)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"from step {int(killed_at[-6:])}" in resumed.stdout
    assert steps(killed) == steps(whole) == [1, 2, 3, 4]
    want, got = adapters(whole), adapters(killed)
    for agent in AGENTS:
        assert want[agent].keys() == got[agent].keys()
        assert all(torch.equal(want[agent][k], got[agent][k]) for k in want[agent]), agent
    lines = lambda d: [{k: v for k, v in json.loads(x).items() if not k.startswith("time/")}
                       for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert lines(killed) == lines(whole)


def test_a_crash_during_a_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    cfg = Config(**{**PRESETS["tiny"], "steps": 2, "save_every": 1, "problems_per_step": 1,
                    "samples_per_problem": 1, "max_new_tokens": 8, "out_dir": str(tmp_path / "run")})
    real_save = torch.save
    calls = []

    def flaky_save(obj, path, *a, **kw):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_save(obj, path, *a, **kw)

    monkeypatch.setattr(torch, "save", flaky_save)
    with pytest.raises(OSError, match="disk full"):
        train.train(cfg, quiet=True)
    done = checkpoint.checkpoints(tmp_path / "run")
    assert [p.name for p in done] == ["step_000001"]
    state = torch.load(done[0] / "state.pt", weights_only=False)
    assert state["step"] == 1 and state["config"]["steps"] == 2
    assert set(os.listdir(tmp_path / "run" / "adapters")) >= set(AGENTS)


def test_keeps_only_the_newest_checkpoints(tmp_path):
    cfg = Config(**{**PRESETS["tiny"], "steps": 3, "save_every": 1, "keep_checkpoints": 2, "problems_per_step": 1,
                    "samples_per_problem": 1, "max_new_tokens": 8, "out_dir": str(tmp_path / "run")})
    train.train(cfg, quiet=True)
    assert [p.name for p in checkpoint.checkpoints(tmp_path / "run")] == ["step_000002", "step_000003"]
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith(".tmp")]


class GarbageCoach:
    """Every fourth action gets an unparsable answer (None); the rest a fixed score."""

    def __init__(self):
        self.seen = 0

    def score(self, items):
        out = [None if (self.seen + i) % 4 == 0 else 7.0 for i in range(len(items))]
        self.seen += len(items)
        return out


def test_unscored_actions_are_counted_and_never_trained_on(tmp_path):
    cfg = Config(**{**PRESETS["tiny"], "steps": 1, "problems_per_step": 3, "samples_per_problem": 1,
                    "out_dir": str(tmp_path / "run")})
    run_dir = train.train(cfg, coach=GarbageCoach(), quiet=True)
    m = json.loads((run_dir / "metrics.jsonl").read_text())
    total = sum(m[f"{a}/actions"] for a in AGENTS)
    assert sum(m[f"{a}/unscored"] for a in AGENTS) == len(range(0, total, 4)) > 0
    for a in AGENTS:
        assert m[f"{a}/trained"] <= m[f"{a}/actions"] - m[f"{a}/unscored"]
        if m[f"{a}/unscored"] < m[f"{a}/actions"]:  # the unscored are out of the mean, not zeros in it
            assert m[f"{a}/reward_mean"] == pytest.approx(0.7)


def test_an_episode_that_fails_is_dropped_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    import rollout
    real = rollout.agent_input

    def failing(agent, text, *a, **kw):
        if agent.name == "executor" and "apples" in text.lower():
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        return real(agent, text, *a, **kw)

    monkeypatch.setattr(rollout, "agent_input", failing)
    cfg = Config(**{**PRESETS["tiny"], "steps": 2, "problems_per_step": 4, "samples_per_problem": 1,
                    "out_dir": str(tmp_path / "run")})
    run_dir = train.train(cfg, quiet=True)
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    dropped = sum(m["episode/dropped"] for m in metrics)
    assert sum(m["episode/count"] for m in metrics) + dropped == 8
    assert dropped == capsys.readouterr().err.count("dropped an episode")
    assert all(m["executor/actions"] == m["episode/count"] for m in metrics)


def test_a_non_finite_loss_skips_the_step_and_counts_it(policy, monkeypatch):
    import rl
    from agents import MATH, make_optimizers
    from tests.test_policy import make_actions, snapshot
    tokenizer, model = policy
    optimizers, _ = make_optimizers(model, MATH, lr=1e-2)
    actions = make_actions(tokenizer, model, "solver")
    real = rl.clipped_policy_loss
    monkeypatch.setattr(rl, "clipped_policy_loss", lambda *a, **kw: (real(*a, **kw)[0] * float("nan"), torch.tensor(0.0)))
    before = snapshot(model)
    stats = train.update_agent(model, "solver", actions, optimizers["solver"], Config(**{**PRESETS["tiny"], "minibatch_size": 2}))
    trained = stats["trained"]
    assert trained > 0 and stats["skipped"] == -(-trained // 2)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_out_of_memory_names_the_knobs_and_the_intact_checkpoint(tmp_path, monkeypatch, capsys):
    calls = []

    def oom(*a, **kw):
        calls.append(1)
        if len(calls) > 3:  # the three agents of step 1 pass; step 2 runs out of memory
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"trained": 0}

    monkeypatch.setattr(train, "update_agent", oom)
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--preset", "tiny", "--steps", "3", "--save-every", "1", "--problems-per-step", "1",
                    "--samples-per-problem", "1", "--out-dir", str(tmp_path / "run")])
    assert exit_info.value.code == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    for knob in ("--gen-batch-size", "--micro-batch-size", "--max-new-tokens", "step_000001", "--resume"):
        assert knob in err


def test_existing_run_is_refused_without_resume_or_overwrite(tmp_path, capsys):
    run_dir = tmp_path / "run"
    args = ["--preset", "tiny", "--steps", "1", "--problems-per-step", "1", "--samples-per-problem", "1",
            "--out-dir", str(run_dir)]
    train.main(args)
    (run_dir / "my-notes.txt").write_text("keep me")
    before = (run_dir / "metrics.jsonl").read_text()
    with pytest.raises(SystemExit) as e:
        train.main(args)
    assert e.value.code == 2 and "--resume" in capsys.readouterr().err
    assert (run_dir / "metrics.jsonl").read_text() == before
    train.main(args + ["--overwrite", "--seed", "1"])
    assert json.loads((run_dir / "config.json").read_text())["seed"] == 1
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    assert (run_dir / "my-notes.txt").read_text() == "keep me"


def test_resume_extends_a_finished_run_and_refuses_changed_settings(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    train.main(["--preset", "tiny", "--steps", "1", "--problems-per-step", "1", "--samples-per-problem", "1",
                "--out-dir", str(run_dir)])
    assert "\r" not in capsys.readouterr().err  # not a terminal: no progress line
    with monkeypatch.context() as m:  # a finished run: says so and how to extend it; loads nothing
        m.setattr(train, "load_base", lambda *a, **k: pytest.fail("a finished run loaded the model"))
        train.main(["--resume", str(run_dir)])
    out = capsys.readouterr().out
    assert "finished" in out and f"--resume {run_dir} --steps 2" in out and steps(run_dir) == [1]
    with pytest.raises(SystemExit) as e:
        train.main(["--resume", str(run_dir), "--lr", "0.5"])
    assert e.value.code == 2 and "--lr" in capsys.readouterr().err
    train.main(["--resume", str(run_dir), "--steps", "2"])
    assert steps(run_dir) == [1, 2]
    assert json.loads((run_dir / "config.json").read_text())["steps"] == 1  # the original config stays
