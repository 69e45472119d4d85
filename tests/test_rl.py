"""The RL math on hand-computed tensors, and each vectorised function against its naive loop."""
import math

import pytest
import torch

import rl

REWARDS = torch.tensor([1.0, 0.5])
KL = torch.tensor([[0.1, 0.2, 0.3], [0.4, -0.2, 0.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def test_token_rewards_put_kl_on_every_token_and_reward_on_the_last():
    got = rl.token_rewards(REWARDS, KL, MASK, beta=0.1)
    want = torch.tensor([[-0.01, -0.02, -0.03 + 1.0], [-0.04, 0.02 + 0.5, 0.0]])
    assert torch.allclose(got, want, atol=1e-7)


def test_token_rewards_of_an_empty_action_are_zero():
    got = rl.token_rewards(torch.tensor([1.0]), torch.zeros(1, 3), torch.zeros(1, 3), beta=0.1)
    assert torch.equal(got, torch.zeros(1, 3))


def test_returns_to_go_sum_rewards_to_the_end_of_each_action():
    r = torch.tensor([[-0.01, -0.02, 0.97], [-0.04, 0.52, 0.0]])
    want = torch.tensor([[0.94, 0.95, 0.97], [0.48, 0.52, 0.0]])
    assert torch.allclose(rl.returns_to_go(r, MASK), want, atol=1e-6)


def test_normalize_whitens_over_all_tokens_of_the_batch():
    G = torch.tensor([[0.94, 0.95, 0.97], [0.48, 0.52, 123.0]])  # 123 is padding: ignored
    values = [0.94, 0.95, 0.97, 0.48, 0.52]
    mean = sum(values) / 5  # 0.772
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 5)  # population std, ~0.22266
    want = torch.tensor([[(v - mean) / std for v in values[:3]], [(values[3] - mean) / std, (values[4] - mean) / std, 0.0]])
    got = rl.normalize_advantages(G, MASK)
    assert torch.allclose(got, want, atol=1e-5)
    assert abs(got[MASK.bool()].mean().item()) < 1e-6


def test_normalize_with_global_moments_equals_normalizing_the_concatenated_batch():
    torch.manual_seed(0)
    a, b = torch.randn(3, 5), torch.randn(2, 4)
    ma, mb = (torch.rand(3, 5) > 0.3).float(), (torch.rand(2, 4) > 0.3).float()
    both = torch.zeros(5, 5)
    both[:3], both[3:, :4] = a, b
    mboth = torch.zeros(5, 5)
    mboth[:3], mboth[3:, :4] = ma, mb
    moments = rl.masked_moments(a, ma) + rl.masked_moments(b, mb)  # what an all-reduce sums
    whole = rl.normalize_advantages(both, mboth)
    assert torch.allclose(rl.normalize_advantages(a, ma, moments), whole[:3], atol=1e-6)
    assert torch.allclose(rl.normalize_advantages(b, mb, moments), whole[3:, :4], atol=1e-6)


def test_clipped_loss_hand_computed():
    ratio = torch.tensor([[1.5, 0.9, 1.0, 0.5]])
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, -1.0, 2.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    loss, clip_frac = rl.clipped_policy_loss(ratio.log(), old, adv, mask, clip_eps=0.2)
    # token 0: min(1.5, 1.2) = 1.2 -> -1.2; token 1: min(-0.9, -0.9) -> 0.9; token 2 masked;
    # token 3: min(-0.5, 0.8 * -1) = -0.8 -> 0.8 (the pessimistic bound); mean over 3 tokens
    assert loss.item() == pytest.approx((-1.2 + 0.9 + 0.8) / 3, abs=1e-6)
    assert clip_frac.item() == pytest.approx(2 / 3)


def test_clipped_loss_token_mean_over_a_given_count_for_gradient_accumulation():
    logp, adv, mask = torch.zeros(2, 3), torch.ones(2, 3), torch.ones(2, 3)
    full, _ = rl.clipped_policy_loss(logp, logp, adv, mask)
    half1, _ = rl.clipped_policy_loss(logp[:1], logp[:1], adv[:1], mask[:1], num_tokens=6)
    half2, _ = rl.clipped_policy_loss(logp[1:], logp[1:], adv[1:], mask[1:], num_tokens=6)
    assert (half1 + half2).item() == pytest.approx(full.item())


def test_clipped_loss_gradient_is_reinforce_at_ratio_one():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    adv = torch.tensor([[0.5, -1.5]])
    loss, _ = rl.clipped_policy_loss(logp, logp.detach(), adv, torch.ones(1, 2))
    loss.backward()
    assert torch.allclose(logp.grad, -adv / 2)  # d/dlogp of -mean(ratio * A) at ratio 1


def test_token_logprobs_divide_by_temperature():
    logits = torch.tensor([[[2.0, 0.0, -1.0]]])
    tokens = torch.tensor([[0]])
    want = 1.0 - math.log(math.exp(1.0) + 1 + math.exp(-0.5))
    assert rl.token_logprobs(logits, tokens, temperature=2.0).item() == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("dtype,chunk", [(torch.float32, 3), (torch.float32, 128), (torch.bfloat16, 4)])
def test_chunked_token_logprobs_equal_the_naive_formula_and_its_gradient(dtype, chunk):
    """Chunking (T=7 is no multiple of 3 or 4) changes neither the values nor the gradient."""
    torch.manual_seed(0)
    base = (torch.randn(2, 7, 50) * 3).to(dtype)
    tokens = torch.randint(0, 50, (2, 7))
    weights = torch.randn(2, 7)  # a loss that weighs tokens differently
    got_logits, want_logits = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
    got = rl.token_logprobs(got_logits, tokens, temperature=0.7, chunk=chunk)
    want = torch.log_softmax(want_logits.float() / 0.7, -1).gather(-1, tokens[..., None]).squeeze(-1)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_logits.grad.float(), want_logits.grad.float(), atol=1e-5, rtol=1e-3)
    with torch.no_grad():
        torch.testing.assert_close(rl.token_logprobs(base, tokens, 0.7, chunk), want.detach())


def naive_token_rewards(rewards, kl, mask, beta):
    B, T = kl.shape
    out = torch.zeros(B, T)
    for b in range(B):
        last = None
        for t in range(T):
            if mask[b, t]:
                out[b, t] = -beta * kl[b, t]
                last = t
        if last is not None:
            out[b, last] += rewards[b]
    return out


def naive_returns(r, mask):
    B, T = r.shape
    G = torch.zeros(B, T)
    for b in range(B):
        running = 0.0
        for t in reversed(range(T)):
            running += r[b, t] * mask[b, t]
            G[b, t] = running * mask[b, t]
    return G


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_functions_match_their_naive_loops(seed):
    torch.manual_seed(seed)
    B, T = 5, 7
    lengths = torch.randint(0, T + 1, (B,))
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    rewards, kl = torch.rand(B), torch.randn(B, T)
    r = rl.token_rewards(rewards, kl, mask, beta=0.05)
    assert torch.allclose(r, naive_token_rewards(rewards, kl, mask, 0.05), atol=1e-6)
    assert torch.allclose(rl.returns_to_go(r, mask), naive_returns(r, mask), atol=1e-5)
