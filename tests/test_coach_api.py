"""The coach behind an OpenAI-compatible endpoint, against a real HTTP server on loopback.

Each action's text names what the server should do with it ("case:ok7", "case:429x2:6", ...), so
one batch can mix well-behaved and failing requests, as a real step would."""
import json
import random
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agents import MATH
from coach_api import APICoach, backoff_delay, chat_url, make_coach
from config import PRESETS, Config, UserError, parse_args
from reward import RETRY, coach_messages
from rollout import Action, Episode
from tasks.problems import Problem


class Endpoint:
    """A loopback chat-completions server. Records every request; answers by the action's case."""

    def __init__(self):
        self.requests, self.attempts = [], {}
        self.in_flight = self.max_in_flight = self.done = 0
        # concurrency test: hold each request until `hold_until` are in flight, or all that are left
        # of `hold_total` requests: a client that sends fewer at once than it may stalls here
        self.hold_until = self.hold_total = 0
        self.cond = threading.Condition()
        self.release = threading.Event()  # set at teardown: sleeping handlers return at once
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with endpoint.cond:
                    endpoint.requests.append((self.path, dict(self.headers), body))
                    endpoint.in_flight += 1
                    endpoint.max_in_flight = max(endpoint.max_in_flight, endpoint.in_flight)
                    endpoint.cond.notify_all()
                    if endpoint.hold_until:
                        left = lambda: min(endpoint.hold_until, endpoint.hold_total - endpoint.done)  # noqa: E731
                        endpoint.cond.wait_for(lambda: endpoint.in_flight >= left(), timeout=5)
                status, payload, headers = endpoint.answer(body)
                with endpoint.cond:  # before replying: the client may send its next request at once
                    endpoint.in_flight -= 1
                    endpoint.done += 1
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # a client that timed out hung up
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, body):
        """(status, payload, headers) for one request, by the case named in the action's text."""
        retry = body["messages"][-1]["content"] == RETRY
        case = re.search(r"case:(\S+)", body["messages"][1]["content"]).group(1)
        with self.cond:
            n = self.attempts[case] = self.attempts.get(case, 0) + 1
        kind, _, arg = case.partition(":")
        if kind == "slow":
            self.release.wait(3)
        if kind.startswith(("429x", "500x")) and n <= int(kind[4:]):
            return int(kind[:3]), b"busy", {"Retry-After": "0"}
        if kind in ("429", "500", "502", "404"):
            return int(kind), b"no", {}
        if kind == "garbage":
            return 200, b"<html>proxy error</html>", {}
        text = {"noscore": "I like it.", "noscore-then": "PROCESS_SCORE: " + arg if retry else "Nice."}.get(
            kind, "Fine work.\nPROCESS_SCORE: " + (arg or kind.removeprefix("ok")))
        reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
        return 200, json.dumps(reply).encode(), {"Content-Type": "application/json"}

    def close(self):
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    e = Endpoint()
    yield e
    e.close()


def items_for(cases: list[str]) -> list[tuple[Episode, Action]]:
    """One episode per case; its actions (solver, executor, verifier) all carry the case."""
    out = []
    for i, case in enumerate(cases):
        ep = Episode(Problem(f"p{i}", f"What is {i} + 1?", str(i + 1)), f"What is {i} + 1?")
        for agent in MATH:
            ep.actions.append(Action(agent.name, 0, [{"role": "user", "content": "solve"}], [], [],
                                     f"my work, case:{case}", False))
        out.append((ep, ep.actions[i % len(MATH)]))
    return out


def coach_for(endpoint, **kw) -> APICoach:
    return APICoach(endpoint.url, "judge", MATH, **{"backoff": 0.01, "timeout": 5.0, "retries": 2, **kw})


def test_the_prompts_reach_the_endpoint_and_scores_come_back_in_order(endpoint, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sekrit")
    cfg = Config(**{**PRESETS["tiny"], "coach": "generate", "coach_url": endpoint.url, "coach_model": "judge",
                    "coach_api_key_env": "JUDGE_KEY", "coach_max_new_tokens": 77, "coach_concurrency": 4})
    coach = make_coach(cfg, None, None, MATH)
    cases = [f"ok{s}" for s in (3, 10, 0, 7, 5, 9, 1, 8)]
    items = items_for(cases)
    random.Random(0).shuffle(items)  # the answer must follow its item, not the order of arrival
    assert coach.score(items) == [float(a.text.split("case:ok")[1]) for _, a in items]
    assert len(endpoint.requests) == len(items)
    sent = {json.dumps(body["messages"]) for _, _, body in endpoint.requests}
    for ep, a in items:  # exactly the local coach's prompt (with the reference for the final agent)
        assert json.dumps(coach_messages(ep, a, MATH, show_answer=True, rationale=True)) in sent
    assert any("The correct final answer is" in m for m in sent) and any("correct final" not in m for m in sent)
    for path, headers, body in endpoint.requests:
        assert path == "/v1/chat/completions"
        assert headers["Authorization"] == "Bearer sekrit"
        assert body["model"] == "judge" and body["temperature"] == 0 and body["max_tokens"] == 77


def test_no_key_is_sent_when_its_variable_is_unset(endpoint, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = Config(coach_url=endpoint.url, coach_model="judge")
    assert make_coach(cfg, None, None, MATH).score(items_for(["ok4"])) == [4.0]
    assert "Authorization" not in endpoint.requests[0][1]


def test_at_most_the_concurrency_limit_is_in_flight(endpoint):
    endpoint.hold_until, endpoint.hold_total = 3, 9
    coach = coach_for(endpoint, concurrency=3)
    assert coach.score(items_for(["ok6"] * 9)) == [6.0] * 9
    assert endpoint.max_in_flight == 3


def test_429_and_5xx_are_retried_then_scored(endpoint):
    coach = coach_for(endpoint, retries=2)
    assert coach.score(items_for(["429x2:6", "500x1:4", "ok2"])) == [6.0, 4.0, 2.0]
    assert endpoint.attempts == {"429x2:6": 3, "500x1:4": 2, "ok2": 1}
    assert coach.failed == 0


def test_failures_after_the_retries_leave_the_action_unscored_and_counted(endpoint, capsys):
    coach = coach_for(endpoint, retries=2)
    scores = coach.score(items_for(["429", "500", "502", "garbage", "404", "ok9"]))
    assert scores == [None, None, None, None, None, 9.0]  # never a crash, never a made-up score
    assert coach.failed == 5
    # transient failures are retried (1 + 2 attempts); a 404 (wrong model or URL) is not
    assert endpoint.attempts == {"429": 3, "500": 3, "502": 3, "garbage": 3, "404": 1, "ok9": 1}
    assert "5 of 6 actions unscored" in capsys.readouterr().err


def test_a_timeout_is_retried_then_unscored(endpoint):
    coach = coach_for(endpoint, timeout=0.3, retries=1)
    assert coach.score(items_for(["slow:7", "ok1"])) == [None, 1.0]
    assert endpoint.attempts["slow:7"] == 2 and coach.failed == 1


def test_a_refused_connection_is_unscored():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    coach = APICoach(f"http://127.0.0.1:{port}/v1", "judge", MATH, retries=1, backoff=0.01, timeout=2)
    assert coach.score(items_for(["ok3", "ok4"])) == [None, None] and coach.failed == 2


def test_a_reply_without_a_score_gets_one_format_retry(endpoint):
    coach = coach_for(endpoint)
    assert coach.score(items_for(["noscore-then:8", "noscore"])) == [8.0, None]
    assert endpoint.attempts == {"noscore-then:8": 2, "noscore": 2}
    assert coach.format_retries == 2 and coach.failed == 0  # unscored by the rule, not by the endpoint
    retried = [b["messages"] for _, _, b in endpoint.requests if b["messages"][-1]["content"] == RETRY]
    assert len(retried) == 2 and all(m[-2]["role"] == "assistant" for m in retried)
    assert {m[-2]["content"] for m in retried} == {"Nice.", "I like it."}


def test_backoff_delay():
    rng = random.Random(0)
    assert [round(backoff_delay(k, 1.0, None, rng)) for k in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert 2.0 <= backoff_delay(2, 1.0, None, rng) <= 2.2  # jitter stays small
    assert backoff_delay(1, 1.0, "7", rng) == 7.0  # the server's Retry-After wins
    assert backoff_delay(30, 1.0, None, rng) <= 66 and backoff_delay(1, 1.0, "9999", rng) == 60


def test_chat_url():
    assert chat_url("http://h:8000/v1") == chat_url("http://h:8000/v1/") == "http://h:8000/v1/chat/completions"
    assert chat_url("https://h/v1/chat/completions") == "https://h/v1/chat/completions"


@pytest.mark.parametrize("args, message", [
    (["--coach-url", "http://h/v1"], "--coach-url needs --coach-model"),
    (["--coach-url", "localhost:8000", "--coach-model", "m"], "must start with http"),
    (["--preset", "tiny", "--coach-url", "http://h/v1", "--coach-model", "m"], "pass --coach generate"),
    (["--coach-concurrency", "0"], "--coach-concurrency must be >= 1"),
])
def test_bad_coach_flags(args, message):
    with pytest.raises(UserError, match=re.escape(message)):
        parse_args(args)


def test_a_training_step_with_the_api_coach(endpoint, tmp_path):
    """The trainer wires --coach-url through: every action of the step is scored by the endpoint."""
    from train import train
    cfg = Config(**{**PRESETS["tiny"], "coach": "generate", "coach_url": endpoint.url, "coach_model": "judge",
                    "steps": 1, "problems_per_step": 1, "samples_per_problem": 2, "max_new_tokens": 12,
                    "log_samples": 0, "out_dir": str(tmp_path / "run")})
    endpoint.answer = lambda body: (200, json.dumps({"choices": [{"message": {"content": "PROCESS_SCORE: 7"}}]})
                                    .encode(), {})
    run = train(cfg, quiet=True)
    metrics = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    actions = sum(metrics[f"{a.name}/actions"] for a in MATH)
    assert len(endpoint.requests) == actions + 1 >= 7  # + the one check of the endpoint before training
    assert all(metrics[f"{a.name}/score_mean"] == 7.0 and metrics[f"{a.name}/unscored"] == 0 for a in MATH)
