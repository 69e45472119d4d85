"""A coach that misbehaves costs an action its score, never the run or a whole agent's update; a
coach that scores nothing stops the run in one line; a misconfigured --coach-url is found before
training (issue 16)."""
import json
import math
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch

import train
from coach_api import check_endpoint
from config import PRESETS, Config, UserError, parse_args
from coach_api import CoachGuard
from tests.test_bad_input import run_main


class Scripted:
    """A custom coach: each call answers with the next entry (a list of scores, or an exception)."""

    def __init__(self, *script):
        self.script, self.calls = list(script), 0

    def score(self, items):
        answer = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        if isinstance(answer, BaseException):
            raise answer
        return answer(len(items)) if callable(answer) else answer


def test_scores_that_are_not_numbers_in_0_to_10_leave_only_those_actions_unscored(capsys):
    raw = [math.nan, 15, -5, "7", 5, math.inf, np.float32(3.5), None, 10, 0, True]
    guard = CoachGuard(Scripted(raw))
    assert guard.score(list(range(len(raw)))) == [None, None, None, None, 5.0, None, 3.5, None, 10.0, 0.0, None]
    assert guard.invalid == 6  # None is "unscored" by the coach's own rule, not a misbehaviour
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["coach: 6 of 11 scores are not numbers in 0..10 (e.g. nan); those actions are unscored"]


def test_a_coach_that_raises_or_miscounts_leaves_the_batch_unscored_in_one_line(capsys):
    guard = CoachGuard(Scripted(RuntimeError("server on fire\nsecond line"), [1.0], [2.0, 3.0]))
    assert guard.score(["a", "b"]) == [None, None]
    assert guard.score(["a", "b"]) == [None, None]  # one score for two actions
    assert guard.score(["a", "b"]) == [2.0, 3.0]
    assert guard.failures == 2 and guard.streak == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["coach failed (RuntimeError: server on fire second line); its 2 actions are unscored",
                   "coach failed (ValueError: it returned 1 scores for 2 actions); its 2 actions are unscored"]


def test_n_unscored_steps_in_a_row_stop_with_one_line_and_oom_passes_through():
    guard = CoachGuard(Scripted([None], [4.0], [None], [None], [None]), max_unscored=3)
    assert guard.score([1]) == [None] and guard.score([1]) == [4.0]  # a scored step resets the count
    guard.score([1])
    guard.score([1])
    with pytest.raises(UserError, match="scored no action in 3 steps in a row.*--max-unscored-steps"):
        guard.score([1])
    never = CoachGuard(Scripted([None]), max_unscored=0)
    assert [never.score([1]) for _ in range(5)] == [[None]] * 5
    with pytest.raises(torch.OutOfMemoryError):
        CoachGuard(Scripted(torch.OutOfMemoryError("CUDA out of memory"))).score([1])


def test_training_with_a_misbehaving_coach(tmp_path, capsys):
    """Step 1: NaN for the first action only (that action unscored, the others' rewards intact, no
    update skipped). Step 2: the coach raises (all unscored, the run goes on). Step 3: it raises
    again; with --max-unscored-steps 2 the run stops there in one line."""
    coach = Scripted(lambda n: [math.nan] + [7.0] * (n - 1), RuntimeError("boom"))
    cfg = Config(**{**PRESETS["tiny"], "steps": 5, "problems_per_step": 1, "samples_per_problem": 1,
                    "max_new_tokens": 8, "log_samples": 0, "max_unscored_steps": 2, "out_dir": str(tmp_path / "run")})
    with pytest.raises(UserError, match="2 steps in a row"):
        train.train(cfg, coach=coach, quiet=True)
    m = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in m] == [1, 2]
    assert m[0]["solver/unscored"] == 1 and m[0]["executor/unscored"] == m[0]["verifier/unscored"] == 0
    assert m[0]["executor/reward_mean"] == m[0]["verifier/reward_mean"] == pytest.approx(0.7)
    agents = ("solver", "executor", "verifier")
    assert all(m[0][f"{a}/skipped"] == 0 for a in agents)
    assert all(m[1][f"{a}/unscored"] == m[1][f"{a}/actions"] > 0 and m[1][f"{a}/trained"] == 0 for a in agents)
    assert capsys.readouterr().err.count("coach failed (RuntimeError: boom)") == 2
    assert not (tmp_path / "run" / "lock").exists()


def test_a_nan_score_costs_one_action_not_the_agents_update(policy):
    from agents import MATH, make_optimizers
    from reward import assign_rewards
    from rollout import Episode
    from tests.test_policy import make_actions, tiny_cfg
    tokenizer, model = policy
    actions = make_actions(tokenizer, model, "solver")
    for a in actions:
        a.truncated = False  # the tiny random model rarely stops by itself; train on every action
    guard = CoachGuard(Scripted(lambda n: [math.nan] + [float(i) for i in range(1, n)]))
    for a, s in zip(actions, guard.score(actions)):
        a.score = s
    episode = Episode(None, "")
    episode.actions = actions
    assign_rewards([episode], "process")
    optimizers, _ = make_optimizers(model, MATH, lr=1e-3)
    stats = train.update_agent(model, "solver", actions, optimizers["solver"], tiny_cfg(minibatch_size=2))
    assert stats["trained"] == len(actions) - 1 and stats["skipped"] == 0 and math.isfinite(stats["loss"])


class Server:
    """A loopback OpenAI-compatible server that serves model "judge" at /v1 only."""

    def __init__(self):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    status, reply = 404, {"detail": "Not Found"}
                elif body["model"] != "judge":
                    status, reply = 404, {"error": {"message": f"The model `{body['model']}` does not exist."}}
                else:
                    status, reply = 200, {"choices": [{"message": {"content": "OK"}}]}
                payload = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.root = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.server.shutdown()
    s.server.server_close()


def coach_flags(url, model="judge"):
    return ["--coach", "generate", "--coach-url", url, "--coach-model", model, "--coach-retries", "0"]


def test_the_endpoint_is_checked_once_before_training(server):
    check_endpoint(parse_args(coach_flags(server.root + "/v1")))  # right: no error
    with pytest.raises(UserError, match=r"chat/completions was not found .*ends in /v1"):
        check_endpoint(parse_args(coach_flags(server.root)))
    with pytest.raises(UserError, match="does not serve --coach-model 'judg'"):
        check_endpoint(parse_args(coach_flags(server.root + "/v1", "judg")))
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UserError, match="no answer from .*is the server running"):
        check_endpoint(parse_args(coach_flags(f"http://127.0.0.1:{port}/v1")))


def test_a_wrong_coach_url_is_one_line_before_the_model_loads(server, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train, "load_base", lambda *a, **k: pytest.fail("loaded the model"))
    err = run_main(train.main, ["--model", "tiny", "--steps", "1", "--out-dir", str(tmp_path / "run")]
                   + coach_flags(server.root), capsys)
    assert err.startswith("error: coach check failed:") and "/v1" in err
    assert not (tmp_path / "run").exists()
