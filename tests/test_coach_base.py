"""A coach with its own weights (--coach-base): loaded apart from the team, never trained, never
saved as an adapter, named in config.json, and found again by --resume and eval.py."""
import hashlib
import json

import pytest
import torch

from tests.test_cli import run


@pytest.fixture(scope="module")
def coach_folder(tmp_path_factory):
    """A tiny model with other weights than the team's "tiny": a stand-in for a stronger coach."""
    from agents import load_base
    tokenizer, model = load_base("tiny", load_in_4bit=False, device="cpu")
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    out = tmp_path_factory.mktemp("coach") / "coach-model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def digest(folder) -> str:
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def test_make_coach_loads_its_own_frozen_model_without_adapters(coach_folder, policy):
    from agents import MATH
    from coach_api import load_coach_base, make_coach
    from config import Config
    tokenizer, team = policy
    load_coach_base.cache_clear()
    coach = make_coach(Config(coach_base=str(coach_folder), coach="logit", load_in_4bit=False), team, tokenizer, MATH)
    assert coach.model is not team and coach.model is not team.get_base_model()
    assert not any("lora_" in n for n, _ in coach.model.named_parameters())
    assert not any(p.requires_grad for p in coach.model.parameters())
    assert not coach.model.training
    # the coach's scores come from its own weights: the team's base with adapters off differs
    own = make_coach(Config(coach="logit", load_in_4bit=False), team, tokenizer, MATH)
    assert own.model is team


def test_train_resume_and_eval_use_the_coach_base_and_never_train_it(coach_folder, tmp_path):
    before = digest(coach_folder)
    out = tmp_path / "run"
    proc = run("train.py", "--preset", "tiny", "--steps", "1", "--coach-base", str(coach_folder), "--out-dir", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "tiny" and config["coach_base"] == str(coach_folder)
    adapters = sorted(p.name for p in (out / "adapters").iterdir() if p.is_dir())
    assert adapters == ["executor", "solver", "verifier"]  # the coach is never an adapter
    proc = run("train.py", "--resume", str(out), "--steps", "2")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "config.json").read_text())["coach_base"] == str(coach_folder)
    proc = run("eval.py", str(out), "--limit", "2", "--k", "1", "--coach-mode", "logit")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((out / "eval.json").read_text())
    assert "coach/judge_auc" in result["summary"]
    assert digest(coach_folder) == before  # never written to


def test_a_coach_url_and_a_coach_base_together_are_refused(coach_folder):
    proc = run("train.py", "--preset", "tiny", "--coach-base", str(coach_folder), "--coach-url", "http://x/v1",
               "--coach-model", "m", "--coach", "generate")
    assert proc.returncode == 2 and "--coach-base" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
