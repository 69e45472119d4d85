"""One base, one adapter per agent: updates touch only the acting agent; adapters off = the base."""
import pytest
import torch

import agents
from agents import MATH, acting_as, add_adapters, load_base, make_optimizers
from config import PRESETS, Config
from rollout import Action, generate, render, shared_prefix
from train import action_logprobs, one_step_update, update_agent


def make_actions(tokenizer, model, name, n=6, seed=0):
    """Real sampled actions of agent `name` on short prompts, with rewards and sampling log-probs."""
    torch.manual_seed(seed)
    prompts = [render(tokenizer, [{"role": "user", "content": "What is " + "1+" * (i + 1) + "1?"}]) for i in range(n)]
    scores = []
    with acting_as(model, name):
        outs = generate(model, tokenizer, prompts, 48, 1.0, n, logprobs=scores)
    return [Action(name, 0, [], p, ids, tokenizer.decode(ids), truncated, reward=(i % 3) / 2, logprobs=lp)
            for i, (p, (ids, truncated), lp) in enumerate(zip(prompts, outs, scores))]


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


def test_pruned_batch_sampling_logprobs_equal_the_updates(policy):
    """Rows leave the batch (and its KV cache) as they end; what is left samples exactly as before:
    the log-probs recorded while sampling equal the update's recomputation in the exact context."""
    tokenizer, model = policy
    torch.manual_seed(3)
    prompts = [render(tokenizer, [{"role": "user", "content": "y" * n}]) for n in (1, 5, 17, 40, 2, 9)]
    scores = []
    with acting_as(model, "solver"):
        outs = generate(model, tokenizer, prompts, 40, 0.7, batch_size=6, logprobs=scores)
        actions = [Action("solver", 0, [], p, ids, "", t) for p, (ids, t) in zip(prompts, outs)]
        assert len({len(a.action_ids) for a in actions}) > 2, "no row ended early: nothing was pruned"
        model.eval()
        with torch.no_grad():
            recomputed = action_logprobs(model, actions, 40, micro_batch=6, temperature=0.7)
    for i, (a, lp) in enumerate(zip(actions, scores)):
        assert len(lp) == len(a.action_ids)
        assert torch.allclose(torch.tensor(lp), recomputed[i, :len(lp)], atol=1e-5), i


def test_pruned_greedy_sampling_equals_transformers_generate(policy):
    tokenizer, model = policy
    prompts = [render(tokenizer, [{"role": "user", "content": "z" * n}]) for n in (3, 11, 25)]
    stops = sorted({tokenizer.eos_token_id, *[model.generation_config.eos_token_id]} - {None})
    with acting_as(model, "executor"):
        ours = generate(model, tokenizer, prompts, 12, 0.0, batch_size=3)
        for p, (ids, truncated) in zip(prompts, ours):
            x = torch.tensor([p])
            ref = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=12, do_sample=False,
                                 eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)[0, len(p):].tolist()
            assert ids == ref[:len(ids)] and (truncated or ids[-1] in stops)


def test_one_epoch_update_uses_its_own_pass_as_the_old_policy(policy):
    """One epoch, one optimiser step: skipping the old-policy pass (own detached log-probs, KL from
    the sampling log-probs) moves the adapter exactly as the update with the extra pass does."""
    tokenizer, model = policy
    actions = [a for a in make_actions(tokenizer, model, "solver") if not a.truncated]
    cfg = tiny_cfg(minibatch_size=8, micro_batch_size=2, ppo_epochs=1, beta=0.5)
    assert actions and one_step_update(actions, cfg)
    assert not one_step_update(actions, tiny_cfg(ppo_epochs=2)) and not one_step_update(actions, tiny_cfg(minibatch_size=1))
    start = snapshot(model)
    results = []
    for logged in (True, False):  # False: no sampling log-probs -> the extra old-policy pass
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(start[n])
        sgd = torch.optim.SGD(agents.adapter_parameters(model, "solver"), lr=1e-2)  # Adam would amplify 1e-9 grads
        runs = [Action(**{**vars(a), "logprobs": a.logprobs if logged else None}) for a in actions]
        assert one_step_update(runs, cfg) == logged
        torch.manual_seed(0)
        stats = update_agent(model, "solver", runs, sgd, cfg)
        results.append((snapshot(model), stats))
    (fast, s1), (slow, s2) = results
    moved = [n for n in start if not torch.equal(start[n], slow[n])]
    assert moved and all(torch.allclose(fast[n], slow[n], atol=1e-6) for n in start)
    assert abs(s1["kl"] - s2["kl"]) < 1e-5 and abs(s1["loss"] - s2["loss"]) < 1e-5 and s2["clip_frac"] == 0


def test_shared_prefix_logprobs_and_gradients_equal_the_plain_pass(policy):
    """The update's passes compute the rows' shared head once (gradients flow into it once): the
    same log-probs and the same LoRA gradients as whole left-padded rows."""
    tokenizer, model = policy
    prompts = [render(tokenizer, [{"role": "system", "content": MATH[1].role},
                                  {"role": "user", "content": "What is " + "2*" * i + "3?"}]) for i in range(5)]
    torch.manual_seed(1)
    with acting_as(model, "executor"):
        outs = generate(model, tokenizer, prompts, 24, 1.0, 5)
    actions = [Action("executor", 0, [], p, ids, "", t) for p, (ids, t) in zip(prompts, outs)]
    T = max(len(a.action_ids) for a in actions)
    assert shared_prefix([a.prompt_ids + a.action_ids for a in actions], keep=T + 1) > 3  # the shared path runs
    params = agents.adapter_parameters(model, "executor")
    got = []
    model.train()
    with acting_as(model, "executor"):
        for share in (True, False):
            model.zero_grad()
            logp = action_logprobs(model, actions, T, micro_batch=5, temperature=0.7, share_prefix=share)
            (logp * torch.linspace(-1, 1, T)).sum().backward()
            got.append((logp.detach(), [p.grad.clone() for p in params]))
    model.eval()
    (lp1, g1), (lp2, g2) = got
    assert torch.allclose(lp1, lp2, atol=1e-5) and lp1.abs().sum() > 0
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(g1, g2)) and any(a.abs().sum() > 0 for a in g1)
