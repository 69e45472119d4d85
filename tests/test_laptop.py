"""The laptop team: its corpus, its build path, and the shipped model (tiny/laptop/).

The learning result lives in experiments/laptop.py and the README, never here.
"""
import random

import pytest
import torch

from agents import MATH
from reward import coach_messages
from tasks.grader import extract_boxed, is_equiv
from tasks.problems import load_problems
from tiny import transcripts as T


@pytest.fixture(scope="module")
def problems():
    return load_problems("builtin-easy", "train", 50)


def test_easy_problems_have_one_or_two_steps_and_a_held_out_split():
    train, held = load_problems("builtin-easy", "train"), load_problems("builtin-easy", "eval")
    assert {len(p.steps) - 1 for p in train[:200]} == {1, 2}
    assert not {p.problem for p in train} & {p.problem for p in held}


def test_a_clean_scripted_episode_is_right_and_renders_as_the_rollout_does(problems, monkeypatch):
    monkeypatch.setattr(T, "MISTAKES", {k: 0.0 for k in T.MISTAKES})
    for p in problems[:20]:
        ep = T.play(p, random.Random(0))
        assert [a.agent for a in ep.actions] == ["solver", "executor", "executor", "verifier"]
        assert is_equiv(extract_boxed(ep.actions[-1].text), p.answer)
        assert ep.actions[1].tool_output.strip() == p.answer   # the code computes the answer
        assert all(T.rule_score(a, p.answer, random.Random(0)) >= 8 for a in ep.actions)


def test_mistakes_make_the_corpus_imperfect_and_the_rule_scores_them_low(problems):
    rng = random.Random(1)
    episodes = [T.play(problems[i % len(problems)], rng) for i in range(300)]
    right = [is_equiv(extract_boxed(ep.actions[-1].text), ep.task.answer) for ep in episodes]
    assert 0.5 < sum(right) / len(right) < 0.85
    wrong_final = [ep for ep, ok in zip(episodes, right) if not ok]
    assert all(T.rule_score(ep.actions[-1], ep.task.answer, rng) <= 3 for ep in wrong_final)


def test_loss_covers_exactly_the_agent_turns(problems):
    import tiny
    tok = tiny.build_tokenizer()
    ep = T.play(problems[0], random.Random(0))
    docs = T.agent_documents(ep, tok)
    assert len(docs) == 3  # one conversation per agent; the executor's holds both its actions
    ids, mask = docs[1]
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    executor = [a for a in ep.actions if a.agent == "executor"]
    for a in executor:
        assert a.text in trained
    assert ep.text not in trained and executor[0].tool_output.strip() not in trained.replace(a.text, "")
    # the coach document: the prompt the laptop preset's coach reads, then only the score is trained
    cids, cmask = T.coach_document(ep, ep.actions[-1], tok, random.Random(0))
    prompt = tok.apply_chat_template(coach_messages(ep, ep.actions[-1], MATH, show_answer=True, rationale=False,
                                                    answer_for_all=True, compact=True),
                                     add_generation_prompt=True, return_dict=False)
    assert cids[:len(prompt)] == prompt and not any(cmask[:len(prompt)])
    assert tok.decode([i for i, m in zip(cids, cmask) if m]).startswith("PROCESS_SCORE: ")


def test_the_build_path_is_deterministic_and_loads_like_a_hub_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tiny.pretrain import pretrain
    small = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, episodes_per_step=1,
                 tokenizer_episodes=10, vocab_size=2560, warmup=1)
    torch.set_num_threads(1)
    stats = [pretrain(tmp_path / name, phases=(2, 1), log=lambda s: None, **small) for name in ("a", "b")]
    assert stats[0]["recipe"]["phases"] == (2, 1) and stats[0]["tokens_seen"] == stats[1]["tokens_seen"] > 0
    a = AutoModelForCausalLM.from_pretrained(tmp_path / "a")
    b = AutoModelForCausalLM.from_pretrained(tmp_path / "b")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    tok = AutoTokenizer.from_pretrained(tmp_path / "a")
    assert tok.convert_ids_to_tokens(tok.encode("123", add_special_tokens=False)) == ["1", "2", "3"]


def _prompts(agent, problems, tok):
    """Greedy-decodable prompts for `agent` on held-out problems, upstream turns from the script."""
    from rollout import render
    out = []
    for p in problems:
        ep = T.play(p, random.Random(0))
        a = next(x for x in ep.actions if x.agent == agent)
        out.append(render(tok, a.messages))
    return out


@pytest.mark.parametrize("name", ["laptop", "tiny"])
def test_the_shipped_model_knows_the_formats_and_a_random_one_does_not(name):
    from agents import load_base
    from rollout import generate
    tok, model = load_base(name, load_in_4bit=False, device="cpu")
    held = load_problems("builtin-easy", "eval", 6)
    code = generate(model, tok, _prompts("executor", held, tok), 64, 0.0, 8)
    final = generate(model, tok, _prompts("verifier", held, tok), 32, 0.0, 8)
    texts = [tok.decode(ids, skip_special_tokens=True) for ids, _ in code + final]
    formats = sum("```python" in t and "print(" in t for t in texts[:6]) + \
        sum(extract_boxed(t) is not None for t in texts[6:])
    assert formats == 12 if name == "laptop" else formats == 0


def test_one_mappa_step_runs_on_the_laptop_model(tmp_path):
    import json

    from config import parse_args
    from train import train
    cfg = parse_args(["--preset", "laptop", "--steps", "1", "--problems-per-step", "2", "--samples-per-problem", "2",
                      "--max-new-tokens", "64", "--out-dir", str(tmp_path / "run")])
    run = train(cfg, quiet=True)
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert row["episode/count"] == 4 and row["executor/tool_use"] > 0  # its code ran in the sandbox
    for agent in ("solver", "executor", "verifier"):  # the coach (the base, adapters off) scored them
        assert row[f"{agent}/unscored"] < row[f"{agent}/actions"] and 0 <= row[f"{agent}/score_mean"] <= 10
    assert (run / "adapters" / "executor").is_dir()
