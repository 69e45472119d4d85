"""Batched sampling: a token budget bounds each batch, batching never changes a row's tokens under
a fixed seed (per-row generators), and a long stage tells a terminal how far it is."""
import io
import sys

import torch

import generation
from agents import acting_as
from generation import token_batches
from rollout import generate, render
from runlog import Progress


def test_token_batches_respect_rows_and_tokens():
    lengths = [3, 9, 5, 5, 40, 1]
    batches = token_batches(lengths, rows=3, tokens=16)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 16  # one over-long row goes alone
    assert [4] in batches
    assert token_batches([3, 9, 5], rows=2, tokens=12) == [[0, 2], [1]]


def prompts_of(tokenizer, n=6):
    return [render(tokenizer, [{"role": "user", "content": "Say " + "ab " * (3 * i + 1)}]) for i in range(n)]


def test_batching_gives_the_same_tokens_as_one_row_at_a_time(policy):
    """Each row samples from its own generator (seeded from one global draw per call and the row's
    index), so its tokens do not depend on the batch it ran in (fp32; rows never see each other)."""
    tokenizer, model = policy
    prompts = prompts_of(tokenizer)
    outs = {}
    with acting_as(model, "solver"):
        for rows in (6, 4, 1):
            torch.manual_seed(7)
            lps = []
            outs[rows] = (generate(model, tokenizer, prompts, 20, 1.0, rows, logprobs=lps), lps)
    assert outs[6][0] == outs[4][0] == outs[1][0]
    for a, b in zip(outs[6][1], outs[1][1]):
        assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-4)
    assert len({tuple(ids) for ids, _ in outs[6][0]}) > 1  # really sampled


def test_a_token_budget_gives_the_same_tokens_in_bounded_batches(policy, monkeypatch):
    """Issue 29 item 2: the same tokens as before under a fixed seed; every batch within rows x length."""
    tokenizer, model = policy
    prompts = prompts_of(tokenizer)
    seen, plain = [], generation.sample_rows

    def spy(model_, rows, *a, **k):
        seen.append([len(p) for p in rows])
        return plain(model_, rows, *a, **k)

    monkeypatch.setattr(generation, "sample_rows", spy)
    budget = 2 * max(len(p) for p in prompts)
    with acting_as(model, "solver"):
        torch.manual_seed(3)
        free = generate(model, tokenizer, prompts, 12, 1.0, 32)
        torch.manual_seed(3)
        bounded = generate(model, tokenizer, prompts, 12, 1.0, 32, prefill_tokens=budget)
    assert free == bounded
    assert len(seen[0]) == 6 and len(seen) > 2
    assert all(len(b) * max(b) <= budget for b in seen[1:])


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_a_long_stage_shows_rows_and_tokens_left_on_a_terminal(policy):
    import sandbox
    from agents import MATH
    from rollout import new_episodes, rollout
    from tasks.problems import builtin_problems
    tokenizer, model = policy
    screen = FakeTerminal()
    progress = Progress(stream=screen)
    torch.manual_seed(0)
    rollout(model, tokenizer, MATH, new_episodes(builtin_problems("train", 2), 2), temperature=1.0, max_new_tokens=8,
            batch_size=4, limits=sandbox.Limits(timeout_s=5), progress=lambda t: progress(f"rollout, {t}"))
    lines = screen.getvalue().split("\r")
    assert any("solver: batch 1/1, 4 rows decoding, 4 tokens" in ln for ln in lines)
    assert any("verifier:" in ln and "rows decoding" in ln for ln in lines)
    assert len(lines) > 3 * 8  # a line per decode step, not one per stage


def test_eval_bar_moves_while_a_stage_decodes(policy, monkeypatch):
    """eval's bar counts tasks; during a stage its postfix shows the rows and tokens (issue 25:
    it sat at 0/24 for ten minutes, then jumped)."""
    import eval as evaluation
    from agents import MATH
    from config import PRESETS, Config
    tokenizer, model = policy
    screen = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", screen)
    cfg = Config(**{**PRESETS["tiny"], "max_new_tokens": 6})
    evaluation.run_episodes(model, tokenizer, cfg, MATH, k=1, limit=1, progress=True)
    out = screen.getvalue()
    before_done = out[:out.index("100%")]
    assert "0/1" in before_done and "rows decoding" in before_done


def test_the_growing_kv_cache_gives_the_same_tokens_as_transformers_own(policy, monkeypatch):
    """Issue 29 item 10: the cache written in place (GrowingLayer, grown past its first chunk here)
    samples exactly what the torch.cat cache does."""
    tokenizer, model = policy
    prompts = prompts_of(tokenizer, 4)
    monkeypatch.setattr(generation.GrowingLayer, "chunk", 3)
    with torch.no_grad():
        assert isinstance(generation.new_cache(model).layers[0], generation.GrowingLayer)
    assert generation.new_cache(model) is None  # under autograd: transformers' own cache
    runs = []
    for own in (True, False):
        if not own:
            monkeypatch.setattr(generation, "new_cache", lambda m: None)
        with acting_as(model, "solver"):
            torch.manual_seed(5)
            lps = []
            runs.append((generate(model, tokenizer, prompts, 24, 1.0, 4, logprobs=lps), lps))
    assert runs[0][0] == runs[1][0]
    assert all(torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-5) for a, b in zip(runs[0][1], runs[1][1]))
