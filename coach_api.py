"""A coach served elsewhere: a stronger model behind an OpenAI-compatible chat-completions endpoint
(vLLM, SGLang, llama.cpp's server, a hosted API). The paper's coach was a large API model at
temperature 0 (SPEC §3); `--coach-url URL --coach-model NAME` gives the same here.

Prompts and parsing are the local coach's (reward.coach_messages, parse_score and the one format
retry), so the two coaches read exactly the same thing. The rules of the wire:
- all actions of a step are sent at once, at most `concurrency` requests in flight;
- every request has a timeout; HTTP 429 and 5xx, timeouts, refused connections and unreadable
  replies are retried `retries` times with exponential backoff (honouring Retry-After);
- a reply without a score line gets one format retry (SPEC §3);
- after that the action is *unscored* (None): counted in the logs, never a crash, never a made-up
  score;
- `timeout` is a total deadline per request (connect, send, headers, body), not per socket read: a
  server that drips one byte a second cannot hold a request longer; a reply body is read up to
  MAX_REPLY_BYTES and no further (issue 15);
- a redirect is followed only to the same origin (scheme, host, port) and only with 307/308, which
  keep the POST; any other one fails the request, so the API key never reaches another host.
Only the standard library (http.client and a thread pool): no new dependency.
"""
import functools
import http.client
import json
import numbers
import os
import random
import socket
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import torch

from reward import RETRY, LLMCoach, coach_messages, parse_score

MAX_DELAY = 60.0  # seconds: cap on one backoff wait, also on a server's Retry-After
MAX_REPLY_BYTES = 1 << 20  # a chat completion with a 256-token score rationale is a few KB
MAX_REDIRECTS = 3


class EndpointError(Exception):
    """A chat completion that failed for good (after the retries, or a non-retryable status)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status of a non-retryable reply (400, 401, 404, ...)


def chat_url(url: str) -> str:
    """The chat-completions URL of a base URL: '.../v1' -> '.../v1/chat/completions' (kept if full)."""
    url = url.rstrip("/")
    return url if url.endswith("/chat/completions") else url + "/chat/completions"


def reply_text(raw: bytes) -> str:
    """The assistant's text in a chat-completions reply body; ValueError if the body is not one."""
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise ValueError(f"not a chat-completions reply ({type(e).__name__}): {raw[:120]!r}") from None
    return content or ""


def origin(url: str) -> tuple[str, str, int]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


def post(url: str, body: bytes, headers: dict, timeout: float, max_bytes: int = MAX_REPLY_BYTES) -> tuple[int, dict, bytes]:
    """One HTTP POST: (status, headers, body), the whole exchange within `timeout` seconds. At the
    deadline a timer shuts the socket down, which ends any blocked read (a per-read timeout alone
    lets a server that sends a byte a second hold the request forever). Raises TimeoutError at the
    deadline, ValueError for a body over max_bytes, OSError / HTTPException for the rest."""
    deadline = time.monotonic() + timeout
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = cls(parts.hostname, parts.port, timeout=max(0.01, deadline - time.monotonic()))
        expired = threading.Event()

        def cut():
            expired.set()
            if conn.sock is not None:
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        timer = threading.Timer(max(0.0, deadline - time.monotonic()), cut)
        timer.daemon = True
        timer.start()
        try:
            conn.request("POST", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""), body, headers)
            response = conn.getresponse()
            length = response.getheader("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise ValueError(f"reply of {int(length)} bytes, over the {max_bytes}-byte cap")
            data = response.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise ValueError(f"reply over the {max_bytes}-byte cap")
            status, reply_headers = response.status, {k.lower(): v for k, v in response.getheaders()}
        except (OSError, http.client.HTTPException):
            if expired.is_set():
                raise TimeoutError(f"no complete reply within {timeout:g} s") from None
            raise
        finally:
            timer.cancel()
            conn.close()
        if expired.is_set():
            raise TimeoutError(f"no complete reply within {timeout:g} s")
        if status not in (301, 302, 303, 307, 308):
            return status, reply_headers, data
        target = urllib.parse.urljoin(url, reply_headers.get("location", ""))
        if status not in (307, 308) or origin(target) != origin(url):
            return status, {**reply_headers, "x-not-followed": target}, data
        url = target
    raise OSError(f"more than {MAX_REDIRECTS} redirects")


def backoff_delay(attempt: int, base: float, retry_after: str | None, rng: random.Random) -> float:
    """Seconds to wait before retry number `attempt` (1, 2, ...): the server's Retry-After if it sent
    seconds, else base * 2^(attempt-1) with 10% jitter (so parallel requests do not retry in step)."""
    if retry_after is not None:
        try:
            return min(max(float(retry_after), 0.0), MAX_DELAY)
        except ValueError:  # an HTTP date: fall back to our own schedule
            pass
    delay = min(base * 2 ** (attempt - 1), MAX_DELAY)
    return delay * (1 + 0.1 * rng.random())


class APICoach:
    """The coach as an OpenAI-compatible endpoint; .score(items) like reward.LLMCoach."""

    def __init__(self, url: str, model: str, agents, *, api_key: str | None = None, show_answer: bool = True,
                 max_tokens: int = 256, concurrency: int = 16, timeout: float = 120.0, retries: int = 3,
                 backoff: float = 1.0, tool_chars: int = 2000, answer_for_all: bool = False, compact: bool = False):
        self.url, self.model, self.agents, self.api_key = chat_url(url), model, agents, api_key
        self.answer_for_all, self.compact = answer_for_all, compact
        self.show_answer, self.max_tokens, self.tool_chars = show_answer, max_tokens, tool_chars
        self.concurrency, self.timeout, self.retries, self.backoff = concurrency, timeout, retries, backoff
        self.format_retries = 0  # replies without a score line, asked again once (LLMCoach.retries)
        self.failed = 0          # actions left unscored because the endpoint failed for good
        self.last_error = ""
        self._lock = threading.Lock()
        self._rng = random.Random()  # private: the jitter must not move the training's RNG

    def prompt(self, episode, action) -> list[dict]:
        return coach_messages(episode, action, self.agents, show_answer=self.show_answer, rationale=True,
                              tool_chars=self.tool_chars, answer_for_all=self.answer_for_all, compact=self.compact)

    def score(self, items: list) -> list[float | None]:
        """Process scores 0..10 for (episode, action) pairs, requested concurrently; None = unscored."""
        if not items:
            return []
        convs = [self.prompt(ep, a) for ep, a in items]
        failed_before = self.failed
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(convs))) as pool:
            scores = list(pool.map(self._score_one, convs))
        if self.failed > failed_before:
            print(f"coach: {self.failed - failed_before} of {len(convs)} actions unscored, the endpoint "
                  f"{self.url} failed ({self.last_error})", file=sys.stderr, flush=True)
        return scores

    def _score_one(self, messages: list[dict]) -> float | None:
        try:
            text = self.complete(messages)
            score = parse_score(text)
            if score is None:  # one format retry (SPEC §3), then the action stays unscored
                with self._lock:
                    self.format_retries += 1
                again = messages + [{"role": "assistant", "content": text}, {"role": "user", "content": RETRY}]
                score = parse_score(self.complete(again))
            return score
        except EndpointError as e:
            with self._lock:
                self.failed += 1
                self.last_error = str(e)
            return None

    def complete(self, messages: list[dict]) -> str:
        """The reply text of one chat completion at temperature 0, retrying transient failures.
        Raises EndpointError when it fails for good."""
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0.0,
                           "max_tokens": self.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        error, retry_after = "no attempt", None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(backoff_delay(attempt, self.backoff, retry_after, self._rng))
            retry_after = None
            try:
                code, reply_headers, data = post(self.url, body, headers, self.timeout)
                if code == 200:
                    return reply_text(data)
                if "x-not-followed" in reply_headers:  # never retried: the key stays with this origin
                    raise EndpointError(f"HTTP {code}: redirected to {reply_headers['x-not-followed']}, not "
                                        "followed (another origin, or not a 307/308); pass that URL as --coach-url", code)
                if code not in (408, 429) and code < 500:  # 400/401/404: a bad request, key or model name
                    raise EndpointError(f"HTTP {code}: {data[:200].decode(errors='replace')}", code)
                error, retry_after = f"HTTP {code} after {attempt + 1} attempts", reply_headers.get("retry-after")
            except (http.client.HTTPException, OSError) as e:  # TimeoutError, refused, reset, ...
                error = f"{e} after {attempt + 1} attempts"
            except ValueError as e:  # a 200 whose body is not a chat completion, or too big
                error = f"{e} after {attempt + 1} attempts"
        raise EndpointError(error)


def check_endpoint(cfg) -> None:
    """One tiny request to --coach-url before any model loads: UserError (one line) naming what is
    wrong -- a URL without /v1, an unknown --coach-model, a refused key, no server -- instead of a
    run whose every action comes back unscored."""
    from config import UserError

    coach = APICoach(cfg.coach_url, cfg.coach_model, (), api_key=os.environ.get(cfg.coach_api_key_env) or None,
                     max_tokens=1, timeout=cfg.coach_timeout, retries=min(cfg.coach_retries, 2), backoff=0.5)
    try:
        coach.complete([{"role": "user", "content": "Reply with OK."}])
    except EndpointError as e:
        said = " ".join(str(e).split())[:160]
        if e.status in (400, 404, 422) and "model" in said.lower():
            why = f"the endpoint does not serve --coach-model {cfg.coach_model!r} ({said}); pass a name it lists at .../v1/models"
        elif e.status == 404:
            why = (f"{coach.url} was not found ({said}); an OpenAI-compatible --coach-url usually ends in /v1, "
                   "e.g. http://localhost:8000/v1")
        elif e.status in (401, 403):
            why = f"the endpoint refused the API key ({said}); set ${cfg.coach_api_key_env} or --coach-api-key-env"
        elif "not a chat-completions reply" in said:
            why = f"{coach.url} answered, but not as an OpenAI chat-completions endpoint ({said}); check --coach-url"
        else:
            why = f"no answer from {coach.url} ({said}); is the server running and --coach-url right?"
        raise UserError(f"coach check failed: {why}") from None


def make_coach(cfg, model, tokenizer, agents):
    """The coach a config asks for: the API coach when cfg.coach_url is set; else a local one: its own
    model (cfg.coach_base, loaded here, frozen, never given an adapter or saved) or the shared base
    with adapters off. Either way the KL reference stays the team's base."""
    if not cfg.coach_url:
        if cfg.coach_base:
            tokenizer, model = load_coach_base(cfg.coach_base, cfg.load_in_4bit, str(model.device), cfg.dtype)
        return LLMCoach(model, tokenizer, agents, cfg.coach, cfg.coach_sees_answer, cfg.coach_max_new_tokens,
                        cfg.coach_batch_size, answer_for_all=cfg.coach_answer_for_all, compact=cfg.coach_compact,
                        prefill_tokens=cfg.prefill_tokens)
    return APICoach(cfg.coach_url, cfg.coach_model, agents, api_key=os.environ.get(cfg.coach_api_key_env) or None,
                    show_answer=cfg.coach_sees_answer, max_tokens=cfg.coach_max_new_tokens,
                    concurrency=cfg.coach_concurrency, timeout=cfg.coach_timeout, retries=cfg.coach_retries,
                    answer_for_all=cfg.coach_answer_for_all, compact=cfg.coach_compact)


@functools.lru_cache(maxsize=1)
def load_coach_base(name: str, load_in_4bit: bool | None, device: str, dtype: str | None = None):
    """(tokenizer, model) of a coach with its own weights: frozen (load_base), in eval mode, and
    loaded once per process (eval.py builds a coach per column)."""
    from agents import load_base
    tokenizer, model = load_base(name, load_in_4bit, device, dtype)  # the team's --dtype
    return tokenizer, model.eval()


class CoachGuard:
    """Any coach, made safe for the loop. A score that is not a number in 0..10 (NaN, inf, 15, -5,
    a string) leaves that action unscored and is counted (never clamped: a coach that says 15 is
    broken, not enthusiastic); a coach that raises leaves the batch unscored, said in one line, and
    the run goes on; `max_unscored` calls in a row with no action scored stop the run with one
    line (UserError): a misconfigured coach would train nothing. 0: never stop."""

    def __init__(self, coach, max_unscored: int = 0):
        self.coach, self.max_unscored = coach, max_unscored
        self.invalid = self.failures = self.streak = 0

    def __getattr__(self, name):  # the wrapped coach's counters (.retries, .failed, ...)
        if name == "coach":  # not set yet (copy, unpickling): no endless recursion
            raise AttributeError(name)
        return getattr(self.coach, name)

    def score(self, items: list) -> list[float | None]:
        if not items:
            return []
        try:
            raw = list(self.coach.score(items))
            if len(raw) != len(items):
                raise ValueError(f"it returned {len(raw)} scores for {len(items)} actions")
        except torch.OutOfMemoryError:  # out of memory stays exit 3 with its own advice
            raise
        except Exception as e:
            self.failures += 1
            print(f"coach failed ({type(e).__name__}: {' '.join(str(e).split())[:160]}); its "
                  f"{len(items)} actions are unscored", file=sys.stderr, flush=True)
            raw = [None] * len(items)
        scores = [valid_score(s) for s in raw]
        bad = [s for s, v in zip(raw, scores) if s is not None and v is None]
        if bad:
            self.invalid += len(bad)
            print(f"coach: {len(bad)} of {len(items)} scores are not numbers in 0..10 (e.g. {bad[0]!r:.30}); "
                  "those actions are unscored", file=sys.stderr, flush=True)
        self.streak = self.streak + 1 if all(s is None for s in scores) else 0
        if self.max_unscored and self.streak >= self.max_unscored:
            from config import UserError
            raise UserError(f"the coach scored no action in {self.streak} steps in a row, so the run trains "
                            "nothing; fix the coach (--coach-url, --coach-model, or your coach), then --resume "
                            "the run (or raise --max-unscored-steps)")
        return scores


def valid_score(s) -> float | None:
    """s as a float if it is a real number in [0, 10], else None (NaN and inf are not)."""
    if isinstance(s, bool) or not isinstance(s, numbers.Real):
        return None
    s = float(s)
    return s if 0.0 <= s <= 10.0 else None
