"""The HTTP coach against hostile servers on loopback (issue 15): a redirect to another origin
does not get the API key, a reply that drips a byte a second ends at the deadline, a huge reply
is not read into memory."""
import json
import socket
import threading
import time

import pytest

from agents import MATH
from coach_api import APICoach, EndpointError

OK = json.dumps({"choices": [{"message": {"content": "PROCESS_SCORE: 7"}}]}).encode()


class RawServer:
    """A loopback TCP server; `reply(conn, request_bytes)` writes whatever it likes."""

    def __init__(self, reply):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port, self.requests, self.reply, self.stop = self.sock.getsockname()[1], [], reply, threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(conn,), daemon=True).start()

    def handle(self, conn):
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            n = int(next((ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")), 0))
            while len(body) < n:
                body += conn.recv(65536)
            self.requests.append(head.decode())
            try:
                self.reply(self, conn)
            except OSError:  # the client hung up
                pass

    def close(self):
        self.stop.set()
        self.sock.close()


@pytest.fixture
def servers():
    made = []
    yield lambda reply: made.append(RawServer(reply)) or made[-1]
    for s in made:
        s.close()


def answer(conn, body: bytes, status: str = "200 OK", extra: str = ""):
    conn.sendall(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n".encode() + body)


def coach(port, **kw):
    return APICoach(f"http://127.0.0.1:{port}/v1", "judge", MATH, api_key="sk-secret", backoff=0.01, **kw)


@pytest.mark.parametrize("status", ["302 Found", "307 Temporary Redirect", "308 Permanent Redirect"])
def test_no_credentials_on_a_redirect_to_another_origin(servers, status):
    other = servers(lambda s, c: answer(c, OK))
    first = servers(lambda s, c: answer(c, b"", status, f"Location: http://127.0.0.1:{other.port}/v1/chat/completions\r\n"))
    with pytest.raises(EndpointError, match="not followed"):
        coach(first.port, retries=2).complete([{"role": "user", "content": "hi"}])
    assert len(first.requests) == 1 and "authorization: bearer sk-secret" in first.requests[0].lower()
    assert other.requests == []  # never contacted, so never given the key


def test_a_same_origin_307_is_followed_with_the_key(servers):
    def reply(s, c):
        if "POST /v1/chat/completions " in s.requests[-1]:
            answer(c, b"", "307 Temporary Redirect", "Location: /v2/chat/completions\r\n")
        else:
            answer(c, OK)
    s = servers(reply)
    assert coach(s.port).complete([{"role": "user", "content": "hi"}]) == "PROCESS_SCORE: 7"
    assert [r.split()[1] for r in s.requests] == ["/v1/chat/completions", "/v2/chat/completions"]
    assert all("bearer sk-secret" in r.lower() for r in s.requests)


def test_a_slow_drip_reply_ends_at_the_deadline(servers):
    def drip(s, c):  # a byte a second, forever: each read is quick, the whole never comes
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        while not s.stop.is_set():
            c.sendall(b" ")
            time.sleep(1.0)
    s = servers(drip)
    c = coach(s.port, timeout=2.0, retries=0)
    t0 = time.monotonic()
    with pytest.raises(EndpointError, match="within 2 s"):
        c.complete([{"role": "user", "content": "hi"}])
    assert time.monotonic() - t0 < 3.0  # the timeout plus one second, not 100000 s


def test_a_huge_reply_is_not_read(servers):
    big = b"x" * (50 << 20)  # 50 MB announced and sent
    s = servers(lambda s, c: answer(c, big))
    chunked = servers(lambda s, c: (c.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"),
                                    [c.sendall(b"100000\r\n" + b"x" * (1 << 20) + b"\r\n") for _ in range(50)]))
    for server in (s, chunked):
        with pytest.raises(EndpointError, match="byte cap"):
            coach(server.port, retries=0, timeout=10).complete([{"role": "user", "content": "hi"}])


def test_a_prompt_over_the_coachs_context_is_unscored_before_any_forward_pass(policy, monkeypatch):
    """An action whose prompt (its text, what it saw) is far over the local coach's
    context is left unscored with the reason; the others of the batch are scored as usual."""
    import random as rnd

    from reward import LLMCoach
    from tests.test_reward import episode_with_actions
    tokenizer, model = policy
    ep = episode_with_actions(tokenizer)
    flood = " ".join(f"{rnd.Random(i).random():.6f}" for i in range(20_000))  # ~8 tokens a word
    ep.actions[1].text, ep.actions[1].messages = flood, [{"role": "user", "content": flood}]
    coach = LLMCoach(model, tokenizer, MATH, mode="logit", batch_size=3)
    seen = []
    real = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: seen.append(k["input_ids"].shape) or real(*a, **k))
    scores = coach.score([(ep, a) for a in ep.actions])
    assert scores[1] is None and scores[0] is not None and scores[2] is not None
    assert ep.actions[1].coach_text.startswith("unscored: the coach prompt has ")
    assert "over the coach's context of 4096" in ep.actions[1].coach_text
    assert seen and all(shape[1] <= 4096 for shape in seen)
