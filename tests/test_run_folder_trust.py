"""A run folder is data, not instructions (issue 15): a downloaded or shared run cannot run code
on --resume, send a secret anywhere from `eval.py RUN`, or pick the endpoint of a resumed run."""
import dataclasses

import pytest
import torch

import checkpoint
import config
import train
from config import PRESETS, Config, save_config


class Payload:
    """Unpickling this calls open(marker, 'w'): a stand-in for any code a pickle can run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def planted_run(tmp_path, **overrides):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_000001").mkdir(parents=True)
    save_config(Config(**{**PRESETS["tiny"], "out_dir": str(run), **overrides}), run / "config.json")
    return run


def test_a_planted_pickle_is_refused_on_resume_and_never_runs(tmp_path, capsys, policy):
    # a complete checkpoint (real adapters, as a run saves them) whose state.pt is the payload
    run, marker = planted_run(tmp_path, lora_r=4, lora_alpha=8), tmp_path / "pwned"
    policy[1].save_pretrained(run / "checkpoints" / "step_000001" / "adapters",
                              selected_adapters=["solver", "executor", "verifier"])
    torch.save({"step": 1, "rng": Payload(marker)}, run / "checkpoints" / "step_000001" / "state.pt")
    with pytest.raises(SystemExit) as e:
        train.main(["--resume", str(run)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and not marker.exists()
    # with no other checkpoint to fall back to (issue 16), the run does not resume
    assert err.count("\n") == 1 and "state.pt holds more than tensors and plain values: refused" in err


def test_a_saved_state_is_tensors_and_plain_values(tmp_path):
    """What save() writes reads back through the weights-only loader, RNG streams included."""
    import random

    import numpy as np
    ckpt = tmp_path / "step"
    ckpt.mkdir()
    torch.save({"step": 3, "rng": checkpoint.rng_state()}, ckpt / "state.pt")
    want = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.random(), np.random.rand(), torch.rand(1)  # move every stream on
    checkpoint.set_rng_state(checkpoint.read_state(ckpt)["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == want


def endpoint_run(tmp_path):
    """A run folder whose config sends the coach's prompts, with the key of MAPPA_TEST_SECRET, to a
    server of the run's author."""
    return planted_run(tmp_path, coach="generate", coach_url="http://attacker.example:9/v1",
                       coach_model="m", coach_api_key_env="MAPPA_TEST_SECRET")


def test_eval_takes_no_endpoint_or_key_variable_from_a_run(tmp_path, monkeypatch, capsys):
    import eval as ev
    from coach_api import APICoach, make_coach
    from reward import LLMCoach
    monkeypatch.setenv("MAPPA_TEST_SECRET", "sk-users-own")
    run = endpoint_run(tmp_path)
    cfg = config.load_config(run)
    coach_cfg = ev.coach_config(cfg, ev.parse_eval_args([str(run)]), run)
    assert (coach_cfg.coach_url, coach_cfg.coach_api_key_env) == ("", "OPENAI_API_KEY")
    assert isinstance(make_coach(coach_cfg, None, None, ()), LLMCoach)  # the local coach
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "names the coach endpoint http://attacker.example:9/v1; ignored" in err
    # given again on the command line, an endpoint is used, with the key variable named there only
    args = ev.parse_eval_args([str(run), "--coach-url", "http://127.0.0.1:9/v1", "--coach-model", "judge"])
    coach = make_coach(ev.coach_config(cfg, args, run), None, None, ())
    assert isinstance(coach, APICoach) and coach.url.startswith("http://127.0.0.1:9/") and coach.api_key is None


def test_resume_takes_no_endpoint_or_key_variable_from_a_run(tmp_path, capsys):
    run = endpoint_run(tmp_path)
    cfg = config.parse_args(["--resume", str(run)])
    assert (cfg.coach_url, cfg.coach_api_key_env) == ("", "OPENAI_API_KEY")
    assert "names the coach endpoint http://attacker.example:9/v1; ignored" in capsys.readouterr().err
    again = config.parse_args(["--resume", str(run), "--coach-url", "http://127.0.0.1:9/v1"])
    assert (again.coach_url, again.coach_api_key_env) == ("http://127.0.0.1:9/v1", "OPENAI_API_KEY")
    assert dataclasses.asdict(cfg) | {"coach_url": again.coach_url} == dataclasses.asdict(again)


def test_eval_never_contacts_a_runs_endpoint(tmp_path, monkeypatch, capsys):
    """eval.py's checks before loading a model reach the endpoint of the command line only: the
    run's own server (a real one on loopback) never hears from us, nor gets the key."""
    import eval as ev
    from tests.test_coach_limits import OK, RawServer, answer
    monkeypatch.setenv("MAPPA_TEST_SECRET", "sk-users-own")
    server = RawServer(lambda s, c: answer(c, OK))
    try:
        run = planted_run(tmp_path, coach="generate", coach_url=f"http://127.0.0.1:{server.port}/v1",
                          coach_model="m", coach_api_key_env="MAPPA_TEST_SECRET")
        args = ev.parse_eval_args([str(run), "--base-only", "--limit", "1"])
        ev.check_columns(ev.plan_columns(args), args)
        assert server.requests == []
        assert "ignored" in capsys.readouterr().err
    finally:
        server.close()
