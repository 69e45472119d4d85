"""Meeting the ecosystem: experiment trackers (--report-to), the threads default (--threads) and the
progress line (a terminal only)."""
import io
import json
import sys
import types

import pytest
import torch

import dist
import runlog
import train
from agents import MATH, ModelLoadError
from config import UserError, parse_args
from runlog import Progress, RunLog


class FakeTracker(types.ModuleType):
    """Stands in for wandb / trackio (module API) and torch.utils.tensorboard (SummaryWriter)."""

    def __init__(self, name):
        super().__init__(name)
        self.calls = []
        tracker = self

        class SummaryWriter:
            def __init__(self, log_dir):
                tracker.calls.append(("init", log_dir))

            def add_scalar(self, key, value, step):
                tracker.calls.append(("scalar", key, value, step))

            def flush(self):
                pass

            def close(self):
                tracker.calls.append(("close",))
        self.SummaryWriter = SummaryWriter

    def init(self, **kw):
        self.calls.append(("init", kw))

    def log(self, values, step):
        self.calls.append(("log", values, step))

    def finish(self):
        self.calls.append(("close",))


STEPS = [{"step": 1, "episode/accuracy": 0.5, "solver/reward_mean": 0.25, "solver/kl": float("nan"), "time/step": 2.0},
         {"step": 2, "episode/accuracy": 1.0, "solver/reward_mean": 0.75, "solver/kl": 0.01, "time/step": 1.5}]


@pytest.mark.parametrize("name, module", [("wandb", "wandb"), ("trackio", "trackio"),
                                          ("tensorboard", "torch.utils.tensorboard")])
def test_the_tracker_gets_the_keys_of_metrics_jsonl(tmp_path, monkeypatch, name, module):
    fake = FakeTracker(module)
    monkeypatch.setitem(sys.modules, module, fake)
    log = RunLog(tmp_path, MATH, n_samples=0, quiet=True, report_to=name, config={"lr": 0.1})
    assert fake.calls == []  # started at the first step logged (rank 0 only logs)
    for m in STEPS:
        log.log(m, [])
    log.close()
    saved = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    if name == "tensorboard":
        assert fake.calls[0] == ("init", str(tmp_path / "tensorboard"))
        got = {(c[3], c[1]): c[2] for c in fake.calls if c[0] == "scalar"}
    else:
        assert fake.calls[0] == ("init", {"project": "mappa", "name": tmp_path.name, "config": {"lr": 0.1}})
        got = {(c[2], k): v for c in fake.calls if c[0] == "log" for k, v in c[1].items()}
    want = {(m["step"], k): v for m in saved for k, v in m.items() if k != "step"}
    assert got.keys() == want.keys()
    # a NaN (nothing to average) is null in metrics.jsonl (strict JSON) and NaN for the tracker
    assert all(got[k] == want[k] or (want[k] is None and got[k] != got[k]) for k in want)
    assert fake.calls[-1] == ("close",)


def test_a_missing_tracker_is_one_line_and_exit_2_before_the_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "trackio", None)  # import trackio -> ImportError
    with pytest.raises(UserError, match="pip install trackio"):
        runlog.tracker_module("trackio")
    monkeypatch.setattr(train, "load_base", lambda *a, **k: pytest.fail("the model loaded"))
    with pytest.raises(SystemExit) as e:
        train.main(["--preset", "tiny", "--report-to", "trackio", "--out-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "pip install trackio" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
    assert parse_args(["--preset", "tiny"]).report_to == "none"  # off by default


def test_threads_flag_sets_torch_threads_before_the_model_loads(tmp_path, monkeypatch):
    seen, before = [], torch.get_num_threads()

    def load_base(*a, **k):
        seen.append(torch.get_num_threads())
        raise ModelLoadError("stop here")
    monkeypatch.setattr(train, "load_base", load_base)
    try:
        for flag, want in ((["--threads", "3"], 3), ([], 1)):  # no flag: $OMP_NUM_THREADS (conftest: 1)
            with pytest.raises(SystemExit):
                train.main(["--preset", "tiny", "--out-dir", str(tmp_path / "r"), *flag])
            assert seen[-1] == want
    finally:
        torch.set_num_threads(before)
    with pytest.raises(UserError, match="--threads must be >= 0"):
        parse_args(["--threads", "-1"])


def test_default_threads_leaves_busy_cores_to_other_jobs(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(dist.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(dist.torch, "get_num_threads", lambda: 8)
    for load, want in ((0.1, 8), (2.6, 5), (7.9, 1), (30.0, 1)):
        monkeypatch.setattr(dist.os, "getloadavg", lambda load=load: (load, load, load))
        assert dist.default_threads() == want
    monkeypatch.setattr(dist.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two ranks on this machine share its cores
    assert dist.default_threads() == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "6")  # the user's own choice wins
    assert dist.default_threads() == 6


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_rewrites_one_line_on_a_terminal_and_is_silent_otherwise():
    quiet = io.StringIO()
    p = Progress(quiet)
    p("step 1/2: rollout, 8 episodes")
    p.done()
    assert quiet.getvalue() == ""
    tty = Terminal()
    p = Progress(tty)
    p("step 1/2: rollout, 8 episodes")
    p("step 1/2: coach")
    p.done()
    out = tty.getvalue()
    assert "\n" not in out and out.count("\r") == 4 and "step 1/2: coach" + " " * 14 in out
    assert out.endswith("\r" + " " * 15 + "\r")  # cleared before the step table prints
    off = Terminal()
    Progress(off, enabled=False)("x")  # not rank 0, or quiet=True
    assert off.getvalue() == ""


def test_a_training_step_shows_each_stage_on_a_terminal(tmp_path, monkeypatch, capsys):
    tty = Terminal()
    monkeypatch.setattr(sys, "stderr", tty)
    train.main(["--preset", "tiny", "--steps", "1", "--problems-per-step", "1", "--samples-per-problem", "1",
                "--max-new-tokens", "8", "--out-dir", str(tmp_path / "r")])
    shown = tty.getvalue()
    for stage in ("\rstep 1/1: rollout, 1 episodes", "\rstep 1/1: coach, ", "\rstep 1/1: update solver",
                  "\rstep 1/1: update verifier"):
        assert stage in shown, shown
    assert "step 1" in capsys.readouterr().out  # the table, after the line was cleared
