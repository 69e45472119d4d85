"""--dtype: the choice by capability, autocast around every forward (LoRA intermediates in the compute
dtype), fp16 loss scaling, the PPO ratio at step 1 in bf16, scoring passes without a KV cache."""
import json

import pytest
import torch

import precision
import rl
from agents import acting_as, load_base
from config import PRESETS, Config, load_config, parse_args, save_config
from rollout import Action, generate, render
from tests.conftest import make_policy
from train import action_logprobs, by_length, micro_batches, update_agent


def tiny_cfg(**kw):
    return Config(**{**PRESETS["tiny"], **kw})


def test_auto_dtype_follows_the_cards_bf16_support(monkeypatch):
    for supported, want in ((True, torch.bfloat16), (False, torch.float16)):  # e.g. a Turing card: fp16
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
        assert precision.resolve_dtype("auto", "cuda:0") == want
    assert precision.resolve_dtype("fp32", "cuda") == torch.float32  # one flag forces either
    assert precision.resolve_dtype("bf16", "cpu") == torch.bfloat16


def test_auto_dtype_on_cpu_reads_the_bf16_flags(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert precision.cpu_has_bf16("flags : fpu avx512f avx512_bf16 avx512_vnni")
    assert precision.cpu_has_bf16("flags : fpu amx_bf16 amx_tile")
    assert not precision.cpu_has_bf16("flags : fpu avx2 avx512f")
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert precision.resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert precision.resolve_dtype("auto", "cpu") == torch.bfloat16


def test_dtype_flag_is_parsed_and_saved_in_config_json(tmp_path):
    assert Config().dtype == "auto"
    cfg = parse_args(["--preset", "tiny", "--dtype", "bf16"])
    save_config(cfg, tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bf16"
    assert load_config(tmp_path).dtype == "bf16"


def test_fp16_gets_a_grad_scaler_and_the_others_none():
    assert isinstance(precision.grad_scaler(torch.float16, "cpu"), torch.amp.GradScaler)
    assert precision.grad_scaler(torch.bfloat16, "cpu") is None and precision.grad_scaler(torch.float32, "cpu") is None


def test_checkpointing_default_off_on_cpu_on_with_cuda():
    _, base = load_base("tiny", load_in_4bit=False, device="cpu")
    assert precision.wants_checkpointing(tiny_cfg(gradient_checkpointing=None), "cpu", base) is False
    assert precision.wants_checkpointing(tiny_cfg(gradient_checkpointing=None), "cuda", base) is True
    assert precision.wants_checkpointing(tiny_cfg(gradient_checkpointing=True), "cpu", base) is True


@pytest.fixture(scope="module")
def bf16_policy():
    return make_policy("bf16")


def test_lora_runs_in_the_compute_dtype_with_fp32_master_weights(bf16_policy):
    """Issue 29 item 1: without autocast, peft casts each layer's input to the adapter's fp32 and
    builds fp32 intermediates. Under the fix, lora_A sees and returns bf16; its weight stays fp32."""
    tokenizer, model = bf16_policy
    lora_a = next(m for n, m in model.named_modules() if n.endswith("lora_A.solver"))
    seen = []
    hook = lora_a.register_forward_hook(lambda m, inp, out: seen.append((inp[0].dtype, out.dtype)))
    try:
        with acting_as(model, "solver"):
            model(input_ids=torch.tensor([render(tokenizer, [{"role": "user", "content": "hi"}])]))
    finally:
        hook.remove()
    assert seen and all(s == (torch.bfloat16, torch.bfloat16) for s in seen)
    assert lora_a.weight.dtype == torch.float32
    assert next(p for n, p in model.named_parameters() if "q_proj.base_layer" in n).dtype == torch.bfloat16


def bf16_actions(tokenizer, model, n=6):
    torch.manual_seed(0)
    prompts = [render(tokenizer, [{"role": "user", "content": "What is " + "2*" * (i + 1) + "3?"}]) for i in range(n)]
    scores = []
    with acting_as(model, "solver"):
        outs = generate(model, tokenizer, prompts, 24, 1.0, n, logprobs=scores)
    return [Action("solver", 0, [], p, ids, "", False, reward=(i % 3) / 2, logprobs=lp)
            for i, (p, (ids, _), lp) in enumerate(zip(prompts, outs, scores))]


def test_bf16_ppo_ratio_is_one_at_the_first_step(bf16_policy, monkeypatch):
    """Issue 29 item 3: with the old-policy pass on (2 epochs), the old log-probs and the first
    gradient pass share one layout (epoch 1's micro-batches), so the ratio starts at 1 in bf16."""
    tokenizer, model = bf16_policy
    actions = bf16_actions(tokenizer, model)
    ratios, plain = [], rl.clipped_policy_loss

    def spy(logp, old, adv, mask, eps, weights=None):
        ratios.append(((logp.detach() - old).exp() - 1).abs()[mask > 0])
        assert logp.dtype == old.dtype == adv.dtype == torch.float32  # the math stays fp32
        return plain(logp, old, adv, mask, eps, weights=weights)

    monkeypatch.setattr(rl, "clipped_policy_loss", spy)
    cfg = tiny_cfg(ppo_epochs=2, minibatch_size=3, micro_batch_size=2, dtype="bf16")
    state = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    try:
        update_agent(model, "solver", actions, torch.optim.SGD([p for n, p in model.named_parameters()
                                                                if ".solver." in n], lr=1e-3), cfg)
    finally:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in state:
                    p.copy_(state[n])
    first = torch.cat(ratios[:2])  # the first minibatch's micro-batches: before any optimiser step
    assert first.numel() and first.max().item() <= 1e-3


def test_micro_batches_cut_like_the_update_loop():
    assert micro_batches(list(range(10)), 4, 3) == [[0, 1, 2], [3], [4, 5, 6], [7], [8, 9]]
    assert micro_batches([2, 0, 1], 16, 4) == [[2, 0, 1]]
    assert by_length([3, 0, 2, 1], [5, 1, 9, 2], 2) == [3, 0, 1, 2]  # members kept, sorted within a minibatch


def test_scoring_passes_keep_no_kv_cache(policy):
    """Issue 29 item 4: the no-grad log-prob passes run with use_cache=False (the prefix path's
    shared head is the one cached pass it needs)."""
    tokenizer, model = policy
    actions = [Action("solver", 0, [], render(tokenizer, [{"role": "user", "content": "q" * (i + 1)}]), [5, 6, 7],
                      "", False) for i in range(3)]
    calls = []
    hook = model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw.get("use_cache")), with_kwargs=True)
    try:
        with torch.no_grad(), acting_as(model, "solver"):
            action_logprobs(model, actions, 3, 3, 1.0, share_prefix=False)
            assert calls == [False]
            calls.clear()
            action_logprobs(model, actions, 3, 3, 1.0, share_prefix=True)
            assert calls[-1] is False and len(calls) == 2  # the shared head (cached), then the rows
    finally:
        hook.remove()


def test_fp16_loss_scaling_takes_the_same_step(policy):
    """The GradScaler path (fp16 training) scales the loss and unscales the grads before the clip:
    on an fp32 model the step equals the unscaled one (the scale is a power of two)."""
    tokenizer, model = policy
    actions = [a for a in bf16_actions(tokenizer, model) if not a.truncated]
    cfg = tiny_cfg(minibatch_size=8, micro_batch_size=2)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    after = []
    for scaler in (None, precision.grad_scaler(torch.float16, "cpu")):
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(start[n])
        sgd = torch.optim.SGD([p for n, p in model.named_parameters() if ".solver." in n], lr=1e-2)
        torch.manual_seed(0)
        update_agent(model, "solver", actions, sgd, cfg, scaler=scaler)
        after.append({n: p.detach().clone() for n, p in model.named_parameters()})
    moved = [n for n in start if not torch.equal(start[n], after[0][n])]
    assert moved and all(torch.allclose(after[0][n], after[1][n], atol=1e-6) for n in start)
