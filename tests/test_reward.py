"""The coach: score parsing, the logit mode's exact expected score, unscored actions, prompts."""
import pytest
import torch

from agents import MATH, acting_as
from reward import (LLMCoach, SCORE_PREFIX, assign_rewards, coach_prompt, parse_score, score_candidates,
                    score_distribution)
from rollout import Action, Episode, render
from tasks.problems import Problem


# The rule (README, "The coach's score line"): the FIRST score line with a number decides, as the
# paper's code does; a score outside 0..10 is unscored (None), never clamped.
@pytest.mark.parametrize("text, want", [
    ("Good work.\nPROCESS_SCORE: 7", 7.0), ("PROCESS_SCORE: 7.5", 7.5), ("PROCESS_SCORE=4", 4.0),
    ("**PROCESS_SCORE**: 8", 8.0), ("PROCESS_SCORE: **8**", 8.0), ("Process Score: 7", 7.0),
    ("PROCESS_SCORE: [7]", 7.0), ("process_score: (6)", 6.0), ("PROCESS_SCORE: 7/10", 7.0),
    ("PROCESS_SCORE: 0", 0.0), ("PROCESS_SCORE: 10", 10.0),
    ("PROCESS_SCORE: 2 ... on reflection PROCESS_SCORE: 9", 2.0),  # the first line wins
    ("Format: PROCESS_SCORE: <integer from 0 to 10>\nPROCESS_SCORE: 6", 6.0),  # a line without a number is no score line
    ("PROCESS_SCORE: -3", None), ("PROCESS_SCORE: \u22122", None), ("process_score: 11", None),
    ("PROCESS_SCORE: -1 then PROCESS_SCORE: 5", None),  # the first line decides, even out of range
    ("no score here", None), ("", None), ("PROCESS_SCORE: high", None), (None, None),
])
def test_parse_score(text, want):
    assert parse_score(text) == want


def test_score_distribution_hand_computed():
    """Tokens 0..9 are the digits, 10 and 11 are other tokens; "10" is the two tokens "1", "0"."""
    candidates = {s: [s] for s in range(10)} | {10: [1, 0]}
    p1 = torch.zeros(1, 12)
    p1[0, 1], p1[0, 7], p1[0, 10] = 0.5, 0.25, 0.25
    p2 = torch.zeros(1, 12)
    p2[0, 0], p2[0, 3], p2[0, 11] = 0.4, 0.1, 0.5
    P = score_distribution(p1, p2, candidates)
    # P(10) = .5 * .4 = .2; P(1) = .5 * (1 - (.4 + .1)) = .25; P(7) = .25; renormalised by .7
    want = torch.zeros(1, 11)
    want[0, 10], want[0, 1], want[0, 7] = 0.2 / 0.7, 0.25 / 0.7, 0.25 / 0.7
    assert torch.allclose(P, want, atol=1e-6)
    assert (P @ torch.arange(11.0)).item() == pytest.approx(4.0 / 0.7, abs=1e-5)


def test_score_distribution_with_a_single_token_ten():
    candidates = {s: [s] for s in range(11)}  # e.g. Llama 3, where "10" is one token
    p1 = torch.zeros(2, 12)
    p1[0, 10], p1[0, 3] = 0.6, 0.2
    p1[1, 11] = 1.0  # no mass on any score
    P = score_distribution(p1, None, candidates)
    assert P[0, 10].item() == pytest.approx(0.75) and P[0, 3].item() == pytest.approx(0.25)
    assert torch.all(P[1] == 0)


def episode_with_actions(tokenizer):
    ep = Episode(Problem("p1", "What is 2 + 3?", "5"), "What is 2 + 3?")
    for name, text in (("solver", "2 + 3 = 5, so \\boxed{5}"), ("executor", "```python\nprint(2+3)\n```"),
                       ("verifier", "The answer is \\boxed{5}.")):
        msgs = [{"role": "system", "content": "role"}, {"role": "user", "content": f"input for {name}"}]
        ids = tokenizer.encode(text)
        ep.actions.append(Action(name, 0, msgs, render(tokenizer, msgs), ids, text, False,
                                 tool_output="5\n" if name == "executor" else None,
                                 tool_status="ok" if name == "executor" else None))
    return ep


def test_logit_coach_equals_brute_force_sequence_probabilities(policy):
    """One batched, padded forward pass == separate forward passes over every candidate score."""
    tokenizer, model = policy
    ep = episode_with_actions(tokenizer)
    coach = LLMCoach(model, tokenizer, MATH, mode="logit", batch_size=3)
    got = coach.score([(ep, a) for a in ep.actions])
    prefix, candidates = score_candidates(tokenizer)
    assert len(candidates[10]) == 2 and candidates[10][0] == candidates[1][0]  # "1", "0" as in Qwen
    digits = [candidates[d][0] for d in range(10)]
    for action, score in zip(ep.actions, got):
        ctx = render(tokenizer, coach.prompt(ep, action)) + prefix
        with torch.no_grad(), acting_as(model, None):
            p1 = model(torch.tensor([ctx])).logits[0, -1].softmax(-1)
            p2 = model(torch.tensor([ctx + candidates[1]])).logits[0, -1].softmax(-1)
        P = [p1[candidates[s][0]].item() for s in range(10)] + [p1[candidates[1][0]].item() * p2[candidates[10][1]].item()]
        P[1] *= 1 - p2[digits].sum().item()
        expected = sum(s * p for s, p in enumerate(P)) / sum(P)
        assert score == pytest.approx(expected, abs=1e-4)
        assert 0 <= score <= 10


def test_logit_coach_with_the_shared_prefix_cache_equals_the_plain_pass(policy):
    """The shared head run once (and per agent batch) + padded rests == whole prompts, left-padded."""
    tokenizer, model = policy
    long_task = "A farmer has 17 sheep and buys 5 more each week. How many sheep after 3 weeks?"
    eps = [episode_with_actions(tokenizer) for _ in range(3)]
    eps[1].text, eps[1].task = long_task, Problem("p2", long_task, "32")
    eps[2].actions[0].text += " and more words " * 7  # rows of one agent batch differ in length
    for ep in eps:
        for a in ep.actions:
            a.messages[1]["content"] += "\n" + ep.text
    items = [(ep, a) for ep in eps for a in ep.actions]
    coach = LLMCoach(model, tokenizer, MATH, mode="logit", batch_size=2)
    cached = coach.score(items)
    coach.prefix_cache = False
    plain = coach.score(items)
    assert cached == pytest.approx(plain, abs=1e-5) and len(set(plain)) > 3
    text = coach.prompt(eps[1], eps[1].actions[0])[1]["content"]
    assert text.count(long_task) == 1 and "(the task, as above)" in text  # shown once, whole


def test_logit_coach_batches_by_a_token_budget_with_the_same_scores(policy, monkeypatch):
    """Issue 29 item 2: the coach's prefill is bounded by rows x longest prompt, scores unchanged."""
    import reward
    tokenizer, model = policy
    eps = [episode_with_actions(tokenizer) for _ in range(3)]
    eps[2].actions[0].text += " and more words " * 7
    items = [(ep, a) for ep in eps for a in ep.actions]
    coach = LLMCoach(model, tokenizer, MATH, mode="logit", batch_size=16)
    free = coach.score(items)
    rows, plain = [], reward.prefix_forward
    monkeypatch.setattr(reward, "prefix_forward", lambda m, seqs, *a, **k: rows.append([len(s) for s in seqs]) or plain(m, seqs, *a, **k))
    longest = max(len(reward.render(tokenizer, coach.prompt(ep, a))) for ep, a in items) + 8
    coach.prefill_tokens = 2 * longest
    assert coach.score(items) == pytest.approx(free, abs=1e-5)
    assert rows and all(len(r) * max(r) <= 2 * longest or len(r) == 1 for r in rows)


def test_generate_coach_retries_once_then_leaves_the_action_unscored(policy):
    """A coach that never writes the score line (a random model) scores nothing: no default."""
    tokenizer, model = policy
    ep = episode_with_actions(tokenizer)
    coach = LLMCoach(model, tokenizer, MATH, mode="generate", max_new_tokens=8, batch_size=3)
    scores = coach.score([(ep, a) for a in ep.actions])
    assert scores == [None, None, None]
    assert coach.retries == 3
    assert all("[after the format retry]" in a.coach_text for a in ep.actions)  # kept for eval.py show


def test_coach_prompt_has_the_context_and_the_reference_only_for_the_final_agent(policy):
    tokenizer, _ = policy
    ep = episode_with_actions(tokenizer)
    executor = coach_prompt(ep, ep.actions[1], MATH, reference=None, rationale=True)
    for needle in ("What is 2 + 3?", "Code Executor", MATH[1].role, "input for executor", "print(2+3)",
                   "## Output of its code\n5", "PROCESS_SCORE: <integer from 0 to 10>"):
        assert needle in executor
    coach = LLMCoach(None, tokenizer, MATH, mode="generate", show_answer=True)
    assert "The correct final answer is 5" in coach.prompt(ep, ep.actions[2])[1]["content"]
    assert "correct final answer" not in coach.prompt(ep, ep.actions[0])[1]["content"]
    coach.show_answer = False
    assert "correct final answer" not in coach.prompt(ep, ep.actions[2])[1]["content"]


def test_logit_coach_prompt_ends_at_the_score_prefix(policy):
    tokenizer, _ = policy
    prefix, candidates = score_candidates(tokenizer)
    assert tokenizer.decode(prefix) == SCORE_PREFIX
    assert tokenizer.decode(prefix + candidates[7]) == SCORE_PREFIX + "7"


def test_assign_rewards_modes():
    def ep(correct, scores):
        e = Episode(None, "", correct=correct)
        e.actions = [Action("a", 0, [], [], [], "", False, score=s) for s in scores]
        return e
    eps = [ep(True, [8.0, None]), ep(False, [4.0, 10.0])]
    assign_rewards(eps, "process")
    assert [a.reward for e in eps for a in e.actions] == [0.8, None, 0.4, 1.0]
    assign_rewards(eps, "outcome")
    assert [a.reward for e in eps for a in e.actions] == [1.0, 1.0, 0.0, 0.0]
    assign_rewards(eps, "mixed", outcome_weight=0.25)
    assert [a.reward for e in eps for a in e.actions] == pytest.approx([0.85, None, 0.3, 0.75])
