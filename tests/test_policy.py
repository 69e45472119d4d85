"""One base, one adapter per agent: updates touch only the acting agent; adapters off = the base."""
import pytest
import torch

import agents
from agents import MATH, acting_as, add_adapters, load_base, make_optimizers
from config import PRESETS, Config
from rollout import Action, generate, render
from train import action_logprobs, update_agent


def make_actions(tokenizer, model, name, n=6, seed=0):
    """Real sampled actions of agent `name` on short prompts, with rewards attached."""
    torch.manual_seed(seed)
    prompts = [render(tokenizer, [{"role": "user", "content": "What is " + "1+" * (i + 1) + "1?"}]) for i in range(n)]
    with acting_as(model, name):
        outs = generate(model, tokenizer, prompts, 48, 1.0, n)
    return [Action(name, 0, [], p, ids, tokenizer.decode(ids), truncated, reward=(i % 3) / 2)
            for i, (p, (ids, truncated)) in enumerate(zip(prompts, outs))]


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def tiny_cfg(**kw):
    return Config(**{**PRESETS["tiny"], **kw})


def test_update_changes_only_the_acting_agents_adapter(policy):
    tokenizer, model = policy
    optimizers, _ = make_optimizers(model, MATH, lr=2e-3, weight_decay=0.1)
    cfg = tiny_cfg(minibatch_size=3, micro_batch_size=2, ppo_epochs=2)
    for name in ("solver", "executor"):  # both optimisers hold Adam moments before the check
        update_agent(model, name, make_actions(tokenizer, model, name), optimizers[name], cfg)
    before = snapshot(model)
    actions = make_actions(tokenizer, model, "executor", seed=1)
    assert any(not a.truncated for a in actions)
    stats = update_agent(model, "executor", actions, optimizers["executor"], cfg)
    assert stats["trained"] > 0 and stats["skipped"] == 0
    after = snapshot(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed, "the acting agent's adapter did not move"
    assert all(".executor." in n for n in changed), sorted(changed)[:3]
    assert any("lora_A.executor" in n for n in changed) and any("lora_B.executor" in n for n in changed)


def test_unscored_and_truncated_actions_get_no_update(policy):
    tokenizer, model = policy
    optimizers, _ = make_optimizers(model, MATH, lr=1e-2)
    actions = make_actions(tokenizer, model, "solver")
    for i, a in enumerate(actions):
        a.reward, a.truncated = (None, False) if i % 2 else (0.5, True)
    before = snapshot(model)
    stats = update_agent(model, "solver", actions, optimizers["solver"], tiny_cfg())
    assert stats["trained"] == 0
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_a_batch_without_signal_takes_a_full_step_in_the_paper_form_and_only_the_kl_pull_guarded(policy):
    """Equal rewards: the paper's form whitens -beta*KL up to unit-variance advantages (a full-size
    step); the guarded form keeps -beta*KL unscaled (a step ~beta times smaller) and logs no_signal."""
    tokenizer, model = policy
    actions = make_actions(tokenizer, model, "solver")
    for a in actions:
        a.reward, a.truncated = 0.5, False
    norms = {}
    for form in ("paper", "guarded"):
        optimizers, _ = make_optimizers(model, MATH, lr=1e-9)  # (almost) no move: both forms see the same policy
        stats = update_agent(model, "solver", actions, optimizers["solver"], tiny_cfg(advantage=form, beta=0.01))
        assert stats["no_signal"] == 1.0 and stats["trained"] == len(actions)
        norms[form] = stats["grad_norm"]
    assert norms["guarded"] < 0.05 * norms["paper"], norms
    actions[0].reward = 1.0  # a real difference: signal in both forms
    stats = update_agent(model, "solver", actions, make_optimizers(model, MATH, lr=1e-9)[0]["solver"],
                         tiny_cfg(advantage="guarded"))
    assert stats["no_signal"] == 0.0 and stats["grad_norm"] > norms["guarded"]


@pytest.mark.parametrize("four_bit", [False, True])
def test_coach_logits_equal_the_base_model(four_bit):
    tokenizer, base = load_base("tiny", load_in_4bit=four_bit, device="cpu")
    model = add_adapters(base, MATH, r=4, alpha=8)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    _, fresh = load_base("tiny", load_in_4bit=four_bit, device="cpu")
    x = torch.tensor([tokenizer.encode("PROCESS_SCORE: 7 and some text")])
    with torch.no_grad():
        with acting_as(model, None):
            coach = model(x).logits
        with acting_as(model, "solver"):
            solver = model(x).logits
        assert torch.equal(coach, fresh(x).logits)
        assert not torch.allclose(coach, solver)


def lora_grads(model, x):
    model.train()
    model.zero_grad()
    with acting_as(model, "solver"):
        model(x, labels=x).loss.backward()
    return [p.grad.clone() for p in agents.adapter_parameters(model, "solver")]


def grads_before_and_after_a_generate():
    """LoRA gradients of a 4-bit tiny model, before and after one eval-mode no-grad generate.
    The second is None when the backward crashes (the unguarded trap on some layer shapes)."""
    tokenizer, base = load_base("tiny", load_in_4bit=True, device="cpu")
    model = add_adapters(base, MATH, r=4, alpha=8)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    x = torch.tensor([tokenizer.encode("hello world 12")])
    before = lora_grads(model, x)
    model.eval()
    with torch.no_grad():
        model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=5, do_sample=False)
    try:
        return before, lora_grads(model, x)
    except RuntimeError:
        return before, None


def test_4bit_lora_gradients_unchanged_by_an_eval_mode_generate():
    """SPEC §6: bitsandbytes >= 0.49 repacks 4-bit weights on the first eval-mode pass on
    AVX512-BF16 CPUs, after which LoRA gradients are wrong; load_base guards against it."""
    _, base = load_base("tiny", load_in_4bit=True, device="cpu")
    assert agents.guard_bnb_cpu_repack(base) > 0, "the tiny model was not loaded in 4-bit"
    before, after = grads_before_and_after_a_generate()
    assert after is not None and all(torch.equal(a, b) for a, b in zip(before, after))


def test_the_trap_is_real_here_without_the_guard(monkeypatch):
    """The control for the test above: where the CPU has AVX512-BF16 (this project's machines and
    CI do), the unguarded model really breaks, so the test above can fail. Elsewhere bitsandbytes
    never repacks and there is nothing to show."""
    import bitsandbytes.functional as F
    if not F.has_avx512bf16():
        _, base = load_base("tiny", load_in_4bit=True, device="cpu")
        assert agents.guard_bnb_cpu_repack(base) > 0
        return
    monkeypatch.setattr(agents, "guard_bnb_cpu_repack", lambda model: 0)
    before, after = grads_before_and_after_a_generate()
    assert after is None or not all(torch.equal(a, b) for a, b in zip(before, after))


def test_training_logprobs_equal_the_unpadded_policy(policy):
    """The update scores each action in its exact context, whatever the padding of the batch."""
    tokenizer, model = policy
    actions = make_actions(tokenizer, model, "verifier", n=5)
    T = max(len(a.action_ids) for a in actions)
    model.eval()
    with torch.no_grad(), acting_as(model, "verifier"):
        batched = action_logprobs(model, actions, T, micro_batch=5, temperature=0.7)
        for i, a in enumerate(actions):
            ids = torch.tensor([a.prompt_ids + a.action_ids])
            logits = model(ids).logits[0, len(a.prompt_ids) - 1:-1] / 0.7
            alone = torch.log_softmax(logits, -1).gather(-1, torch.tensor(a.action_ids)[:, None]).squeeze(-1)
            assert torch.allclose(batched[i, :len(a.action_ids)], alone, atol=1e-4)
            assert torch.all(batched[i, len(a.action_ids):] == 0)


def test_batched_generation_equals_one_at_a_time(policy):
    tokenizer, model = policy
    prompts = [render(tokenizer, [{"role": "user", "content": "x" * n}]) for n in (1, 9, 30)]
    with acting_as(model, "solver"):
        together = generate(model, tokenizer, prompts, 10, 0.0, batch_size=3)
        alone = [generate(model, tokenizer, [p], 10, 0.0, batch_size=1)[0] for p in prompts]
    assert together == alone


def test_one_optimiser_per_adapter_owning_only_its_parameters(policy):
    _, model = policy
    optimizers, _ = make_optimizers(model, MATH, lr=1e-3)
    owned = {a.name: {id(p) for g in optimizers[a.name].param_groups for p in g["params"]} for a in MATH}
    assert all(owned[a.name] for a in MATH)
    assert not (owned["solver"] & owned["executor"]) and not (owned["executor"] & owned["verifier"])
    assert owned["solver"] == {id(p) for p in agents.adapter_parameters(model, "solver")}
    optimizers, schedulers = make_optimizers(model, MATH, lr=1e-3, warmup_steps=1, betas=(0.9, 0.95),
                                             schedule="cosine", total_steps={"solver": 3, "executor": 5, "verifier": 5})
    assert optimizers["solver"].param_groups[0]["betas"] == (0.9, 0.95)
    lrs = []
    for _ in range(4):
        lrs.append(optimizers["solver"].param_groups[0]["lr"])
        optimizers["solver"].step()
        schedulers["solver"].step()
    assert lrs == pytest.approx([5e-4, 1e-3, 5.5e-4, 1e-4])  # warm-up, then cosine to 0.1 x lr at step 3


def test_adapters_as_a_run_saves_them_load_back_per_agent(policy, tmp_path):
    """The path eval.py takes: checkpoint.save's save_pretrained, then add_adapters(init_from=...).
    Each agent must get its own weights back (not the first adapter's, not fresh zeros)."""
    tokenizer, model = policy
    model.save_pretrained(tmp_path / "adapters", selected_adapters=[a.name for a in MATH])  # as checkpoint.save
    _, base = load_base("tiny", load_in_4bit=False, device="cpu")
    loaded = add_adapters(base, MATH, init_from=tmp_path / "adapters")
    ids = torch.tensor([tokenizer.encode("What is 2+3? The answer is")])
    with torch.no_grad():
        def logits(m, name):
            with acting_as(m, name):
                return m(ids).logits
        per_agent = {a.name: logits(model, a.name) for a in MATH}
        for a in MATH:
            assert torch.equal(logits(loaded, a.name), per_agent[a.name]), a.name
        assert torch.equal(logits(loaded, None), logits(model, None))
    assert not torch.equal(per_agent["solver"], per_agent["verifier"])  # the adapters really differ
    assert not torch.equal(per_agent["solver"], logits(model, None))
