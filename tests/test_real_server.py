"""The HTTP coach against a real OpenAI-compatible server: `transformers serve` (the
`transformers[serving]` extra) on the tiny model folder, on CPU, on a free loopback port. The
endpoint is reached the way a laptop user would: OPENAI_BASE_URL and --coach-model."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from agents import MATH
from coach_api import APICoach, make_coach
from config import UserError, parse_args
from rollout import Action, Episode
from tasks.problems import Problem

SERVE = "from transformers.cli.transformers import main; main()"  # the `transformers` console script


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_cache):
    """(base URL, model name) of `transformers serve` on the tiny model; stopped (and reaped) after."""
    from models import tiny
    model = str(tiny.ensure_tiny_model("tiny"))
    port, log = free_port(), tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", SERVE, "serve", model, "--host", "127.0.0.1",
                                 "--port", str(port), "--device", "cpu"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 90  # ~10 s on 2 idle cores (imports); more on a loaded machine
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited with {proc.returncode}: {log.read_text()[-1500:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not answer /health in 90 s: {log.read_text()[-1500:]}")
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1", model
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def actions(n: int) -> list[tuple[Episode, Action]]:
    out = []
    for i in range(n):
        ep = Episode(Problem(f"p{i}", f"What is {i} + 1?", str(i + 1)), f"What is {i} + 1?")
        agent = MATH[i % len(MATH)]
        ep.actions.append(Action(agent.name, 0, [{"role": "user", "content": "solve"}], [], [],
                                 f"{i} + 1 = \\boxed{{{i + 1}}}", False))
        out.append((ep, ep.actions[0]))
    return out


def test_the_api_coach_scores_actions_through_transformers_serve(server, monkeypatch):
    url, model = server
    with urllib.request.urlopen(url + "/models", timeout=5) as r:
        assert model in [m["id"] for m in json.load(r)["data"]]
    monkeypatch.setenv("OPENAI_BASE_URL", url)  # the opt-in: --coach-model without --coach-url
    cfg = parse_args(["--preset", "tiny", "--coach", "generate", "--coach-model", model,
                      "--coach-max-new-tokens", "8", "--coach-retries", "0", "--coach-timeout", "30"])
    assert cfg.coach_url == url
    coach = make_coach(cfg, None, None, MATH)
    assert isinstance(coach, APICoach)
    scores = coach.score(actions(3))
    # Every request went through and came back as a chat completion. The random tiny model writes
    # no score line, so each reply got its one format retry and the action stays unscored.
    assert coach.failed == 0, coach.last_error
    assert len(scores) == 3 and all(s is None or 0 <= s <= 10 for s in scores)
    assert sum(s is None for s in scores) <= coach.format_retries <= 3


def test_the_environment_url_is_an_explicit_opt_in(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert parse_args(["--preset", "tiny"]).coach_url == ""  # set for another tool: the local coach stays
    monkeypatch.delenv("OPENAI_BASE_URL")
    with pytest.raises(UserError, match="pass --coach-url URL, or set OPENAI_BASE_URL"):
        parse_args(["--preset", "tiny", "--coach", "generate", "--coach-model", "judge"])
