"""Rollout bookkeeping with a scripted policy: exact contexts, tool turns, what each agent sees."""
import pytest

import rollout
import sandbox
from agents import MATH
from reward import grade
from rollout import Episode, render
from tasks.problems import Problem

SCRIPT = {
    "solver": ["2 + 3 = 5, so \\boxed{5}"],
    "executor": ["Let me check.\n```python\nprint(2 + 3)\n```", "It printed 5. \\boxed{5}"],
    "verifier": ["Verified: \\boxed{5}"],
}


@pytest.fixture
def scripted(policy, monkeypatch):
    """Replace sampling with scripted texts, recording every prompt the policy was given."""
    tokenizer, model = policy
    calls = []

    def fake_generate(model_, tokenizer_, prompts, max_new_tokens, temperature, batch_size, logprobs=None, **_):
        agent = model_.active_adapter
        turn = sum(1 for a, _ in calls if a == agent)
        calls.append((agent, prompts))
        ids = tokenizer.encode(SCRIPT[agent][turn]) + [tokenizer.eos_token_id]
        return [(ids, False)] * len(prompts)

    monkeypatch.setattr(rollout, "generate", fake_generate)
    return tokenizer, model, calls


def run(tokenizer, model, n=2):
    episodes = [Episode(Problem(f"p{i}", "What is 2 + 3?", "5"), "What is 2 + 3?") for i in range(n)]
    return rollout.rollout(model, tokenizer, MATH, episodes, temperature=1.0, max_new_tokens=64, batch_size=8,
                           limits=sandbox.Limits(timeout_s=5))


def test_every_action_records_the_exact_context_it_was_generated_from(scripted):
    tokenizer, model, calls = scripted
    episodes = run(tokenizer, model)
    assert [a for a, _ in calls] == ["solver", "executor", "executor", "verifier"]  # one batched call per turn
    ep = episodes[0]
    assert [(a.agent, a.turn) for a in ep.actions] == [("solver", 0), ("executor", 0), ("executor", 1), ("verifier", 0)]
    for (agent, prompts), action in zip(calls, ep.actions):
        assert action.prompt_ids == prompts[0] == render(tokenizer, action.messages)
    second = ep.actions[2]
    assert second.messages[-2] == {"role": "assistant", "content": SCRIPT["executor"][0]}
    assert second.messages[-1]["role"] == "tool" and second.messages[-1]["content"].startswith("5")
    assert "<tool_response>\n5" in tokenizer.decode(second.prompt_ids)  # the template's own tool turn


def test_code_runs_and_downstream_agents_see_the_right_outputs(scripted):
    tokenizer, model, _ = scripted
    ep = run(tokenizer, model)[0]
    solver, exec1, exec2, verifier = ep.actions
    assert exec1.tool_status == "ok" and exec1.tool_output.startswith("5")
    assert exec2.tool_status is None  # no code in the second action
    assert SCRIPT["solver"][0] in exec1.messages[1]["content"]
    verifier_input = verifier.messages[1]["content"]
    assert SCRIPT["executor"][1] in verifier_input  # the executor's LAST action
    assert "Output of its code:\n5" in verifier_input  # the last tool output there was
    assert solver.action_ids[-1] == tokenizer.eos_token_id and not solver.truncated
    grade(ep, MATH)
    assert ep.answer == "5" and ep.correct


def test_truncated_actions_are_flagged(policy):
    tokenizer, model = policy
    prompts = [render(tokenizer, [{"role": "user", "content": "hi"}])] * 8
    outs = rollout.generate(model, tokenizer, prompts, 2, 1.0, 8)
    for ids, truncated in outs:
        assert truncated == (tokenizer.eos_token_id not in ids)
        assert len(ids) <= 2


def test_templates_without_tool_or_system_roles_fold_them_into_user_turns(policy):
    tokenizer, _ = policy

    class StrictTemplate:
        def __init__(self, tok):
            self.tok = tok

        def apply_chat_template(self, messages, **kw):
            if any(m["role"] in ("system", "tool") for m in messages):
                raise ValueError("unsupported role")
            return self.tok.apply_chat_template(messages, **kw)

    ids = render(StrictTemplate(tokenizer), [{"role": "system", "content": "ROLE"}, {"role": "user", "content": "Q"},
                                             {"role": "assistant", "content": "A"}, {"role": "tool", "content": "OUT"}])
    text = tokenizer.decode(ids)
    assert "ROLE\n\nQ" in text and "Tool output:\nOUT" in text


def test_max_new_tokens_flag_wins_over_the_agents_default(policy, monkeypatch):
    """The paper used 4096 new tokens; an agent's own cap (None by default) must not cut it to 1024."""
    import dataclasses
    tokenizer, model = policy
    budgets = {}

    def fake_generate(model_, tokenizer_, prompts, max_new_tokens, temperature, batch_size, logprobs=None, **_):
        budgets[model_.active_adapter] = max_new_tokens
        return [([tokenizer.eos_token_id], False)] * len(prompts)

    monkeypatch.setattr(rollout, "generate", fake_generate)
    capped = (MATH[0], dataclasses.replace(MATH[1], max_new_tokens=100), MATH[2])  # an explicit per-agent cap
    episodes = [Episode(Problem("p", "What is 2 + 3?", "5"), "What is 2 + 3?")]
    rollout.rollout(model, tokenizer, capped, episodes, temperature=1.0, max_new_tokens=3000, batch_size=8,
                    limits=sandbox.Limits(timeout_s=5))
    assert budgets == {"solver": 3000, "executor": 100, "verifier": 3000}
    assert all(a.max_new_tokens is None for a in MATH)


def test_sampling_ignores_the_models_generation_config(policy):
    """A model whose generation_config sets min_p, no_repeat_ngram_size, top_k, a repetition penalty
    and a forced EOS must still sample from softmax(logits / T): the samples equal a clean model's,
    and the log-probs recorded while sampling equal the update's (train.action_logprobs)."""
    import torch
    from transformers import GenerationConfig

    from agents import acting_as
    from train import action_logprobs
    tokenizer, model = policy
    inner = model.get_base_model()
    prompts = [render(tokenizer, [{"role": "user", "content": "x" * n}]) for n in (3, 11)]
    with acting_as(model, "solver"):
        torch.manual_seed(0)
        clean = rollout.generate(model, tokenizer, prompts, 16, 0.7, 2)
        inner.generation_config = GenerationConfig(
            min_p=0.3, no_repeat_ngram_size=1, top_k=2, repetition_penalty=1.5, do_sample=True,
            forced_eos_token_id=tokenizer.eos_token_id, max_length=60,
            eos_token_id=inner.generation_config.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        torch.manual_seed(0)
        recorded: list = []
        assert rollout.generate(model, tokenizer, prompts, 16, 0.7, 2, logprobs=recorded) == clean
        actions = [rollout.Action("solver", 0, [], p, ids, "", t) for p, (ids, t) in zip(prompts, clean)]
        T = max(len(a.action_ids) for a in actions)
        model.eval()
        with torch.no_grad():
            update = action_logprobs(model, actions, T, 2, 0.7)
    for i, lps in enumerate(recorded):
        assert torch.allclose(update[i, :len(lps)], torch.tensor(lps), atol=1e-4)


def test_the_sample_log_leaves_out_token_level_fields():
    """Actions now carry their sampling log-probs; the JSONL sample log keeps only the readable parts."""
    from runlog import episode_record
    ep = Episode(Problem("p", "q", "5"), "q")
    ep.actions.append(rollout.Action("solver", 0, [], [1, 2], [3, 4], "x", False, logprobs=[-0.5, -0.1]))
    action = episode_record(ep, 1)["actions"][0]
    assert action["tokens"] == 2 and action["text"] == "x"
    assert not {"prompt_ids", "action_ids", "logprobs"} & set(action)
