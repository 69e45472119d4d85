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


def test_clip_frac_counts_only_the_clips_the_objective_applies():
    # ratio 1.5, A > 0: clipped (gradient 0). ratio 0.5, A > 0: outside the range but the unclipped
    # term is the smaller one -- no clip. ratio 1.5, A < 0: same. ratio 0.5, A < 0: clipped.
    ratio = torch.tensor([[1.5, 0.5, 1.5, 0.5, 1.1]])
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 1.0]])
    logp = ratio.log().requires_grad_(True)
    loss, clip_frac = rl.clipped_policy_loss(logp, torch.zeros(1, 5), adv, torch.ones(1, 5), clip_eps=0.2)
    assert clip_frac.item() == pytest.approx(2 / 5)
    loss.backward()
    assert (logp.grad[0] == 0).tolist() == [True, False, False, True, False]  # the clipped ones carry no gradient


def naive_guarded(rewards, kl, mask, beta, min_std, eps=1e-8):
    B, T = kl.shape
    values = [rewards[b].item() for b in range(B) for t in range(T) if mask[b, t]]
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    A = torch.zeros(B, T)
    for b in range(B):
        running = 0.0
        for t in reversed(range(T)):
            if mask[b, t]:
                running += -beta * kl[b, t].item()
                scaled = 0.0 if std < min_std else (rewards[b].item() - mean) / (std + eps)
                A[b, t] = scaled + running
    return A


def test_guarded_advantages_hand_computed():
    # rewards 1.0 (3 tokens) and 0.5 (2 tokens): token mean 0.8, population std sqrt(0.06)
    got = rl.guarded_advantages(REWARDS, KL, MASK, beta=0.1, min_std=0.01)
    std = math.sqrt(0.06)
    hi, lo = (1.0 - 0.8) / std, (0.5 - 0.8) / std
    want = torch.tensor([[hi - 0.06, hi - 0.05, hi - 0.03], [lo - 0.02, lo + 0.02, 0.0]])  # + returns of -0.1 * KL
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(got, naive_guarded(REWARDS, KL, MASK, 0.1, 0.01), atol=1e-6)


def test_guarded_advantages_of_a_batch_without_signal_keep_only_the_kl_pull():
    tied = torch.tensor([0.46705, 0.46735])  # a logit coach's 4th-decimal noise
    got = rl.guarded_advantages(tied, KL, MASK, beta=0.1, min_std=0.01)
    want = torch.tensor([[-0.06, -0.05, -0.03], [-0.02, 0.02, 0.0]])
    assert torch.allclose(got, want, atol=1e-6)
    assert torch.allclose(got, naive_guarded(tied, KL, MASK, 0.1, 0.01), atol=1e-6)
    # the paper's form blows the same batch up to unit-variance advantages
    paper = rl.normalize_advantages(rl.returns_to_go(rl.token_rewards(tied, KL, MASK, 0.1), MASK), MASK)
    assert paper[MASK.bool()].std(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    assert rl.no_signal(rl.masked_moments(rl.reward_returns(tied, MASK), MASK), 0.01)
    assert not rl.no_signal(rl.masked_moments(rl.reward_returns(REWARDS, MASK), MASK), 0.01)


@pytest.mark.parametrize("seed", [0, 1])
def test_guarded_advantages_match_their_naive_loop_with_global_moments(seed):
    torch.manual_seed(seed)
    lengths = torch.tensor([3, 7, 1, 5])
    mask = (torch.arange(7)[None] < lengths[:, None]).float()
    rewards, kl = torch.rand(4), torch.randn(4, 7)
    assert torch.allclose(rl.reward_returns(rewards, mask),
                          rl.returns_to_go(rl.token_rewards(rewards, kl, mask, 0.0), mask), atol=1e-6)
    whole = rl.guarded_advantages(rewards, kl, mask, 0.05)
    assert torch.allclose(whole, naive_guarded(rewards, kl, mask, 0.05, 0.01), atol=1e-5)
    moments = rl.masked_moments(rl.reward_returns(rewards, mask), mask)  # what ranks all-reduce
    part = rl.guarded_advantages(rewards[:2], kl[:2], mask[:2], 0.05, moments)
    assert torch.allclose(part, whole[:2], atol=1e-6)


def test_loss_weights_token_and_sequence_means_hand_computed():
    # MASK: an action of 3 tokens and one of 2
    tok = rl.loss_weights(MASK, "token", n_tokens=5, n_actions=2)
    assert torch.allclose(tok, MASK / 5)
    seq = rl.loss_weights(MASK, "sequence", n_tokens=5, n_actions=2)
    assert torch.allclose(seq, torch.tensor([[1 / 6, 1 / 6, 1 / 6], [1 / 4, 1 / 4, 0.0]]))
    # per-token losses 1: token mean 1, sequence mean 1; a long action weighs more only in token mode
    per_token = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    assert (per_token * tok).sum().item() == pytest.approx(3 / 5)
    assert (per_token * seq).sum().item() == pytest.approx(1 / 2)
    # micro-batches of one action each add up to the whole minibatch
    parts = torch.cat([rl.loss_weights(MASK[i:i + 1], "sequence", 5, 2) for i in range(2)])
    assert torch.allclose(parts, seq)


def test_lr_factor_warmup_then_constant_or_cosine_to_a_tenth():
    assert [rl.lr_factor(s, 3, 10) for s in (0, 1, 2, 3, 9)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert rl.lr_factor(2, 3, 13, "cosine") == 0.75
    assert rl.lr_factor(3, 3, 13, "cosine") == pytest.approx(1.0)
    assert rl.lr_factor(8, 3, 13, "cosine") == pytest.approx(0.55)  # half way: 0.1 + 0.9 * 0.5
    assert rl.lr_factor(13, 3, 13, "cosine") == pytest.approx(0.1)
    assert rl.lr_factor(50, 3, 13, "cosine") == pytest.approx(0.1)
