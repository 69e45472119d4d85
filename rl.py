"""The RL math of MAPPA's update: REINFORCE with a baseline (the paper's REINFORCE++), as small
pure functions. Tensors in, tensors out; B = actions in the batch, T = action tokens (right-padded).

Per agent, over that agent's actions (SPEC §4):
  1. token rewards: -beta * KL_t on every token, plus the action's reward on its last token;
  2. returns with gamma = 1: G_t = sum of token rewards from t to the end of the action;
  3. the baseline: whiten G over ALL tokens of this agent's batch (no per-prompt groups: downstream
     agents never see the same input twice, so GRPO's group baseline does not apply);
  4. a PPO-clipped surrogate, averaged over tokens.

`--advantage guarded` (ours, not the paper's) replaces step 3 by `guarded_advantages`: only the
reward term is whitened, the -beta*KL returns are added unscaled, and a batch whose rewards are
(nearly) all equal gets no reward advantage at all (TRL does the same for tied groups).
"""
import math

import torch


def kl_k1(logp_old: torch.Tensor, logp_ref: torch.Tensor) -> torch.Tensor:
    """k1 estimate of KL(policy || reference) per sampled token: log p_old(a_t) - log p_ref(a_t).
    [B, T], [B, T] -> [B, T]"""
    return logp_old - logp_ref


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True in each row of mask [B, T] -> [B] (0 for an empty row)."""
    T = mask.shape[1]
    positions = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, torch.zeros_like(positions)).amax(dim=1)


def token_rewards(rewards: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token rewards: -beta * kl_t on action tokens, and the action's reward on its last token.

    rewards [B], kl [B, T], mask [B, T] (1 on action tokens) -> [B, T]

    Naive loop:
        out = zeros(B, T)
        for b in range(B):
            for t in range(T):
                if mask[b, t]:
                    out[b, t] = -beta * kl[b, t]
            out[b, last t with mask[b, t]] += rewards[b]
    """
    mask = mask.to(kl.dtype)
    out = -beta * kl * mask
    last = last_token_index(mask)
    return out.scatter_add(1, last[:, None], (rewards.to(kl.dtype) * mask.amax(dim=1))[:, None])


def returns_to_go(token_rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Undiscounted returns G_t = sum_{t' >= t} r_t' within each action (gamma = 1). [B, T] -> [B, T]

    Naive loop:
        G = zeros(B, T)
        for b in range(B):
            running = 0
            for t in reversed(range(T)):
                running += r[b, t] * mask[b, t]
                G[b, t] = running * mask[b, t]
    """
    r = token_rewards * mask
    return r.flip(1).cumsum(1).flip(1) * mask


def masked_moments(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[sum, sum of squares, count] of x over mask, as a [3] float64 tensor.

    Sums rather than a mean and std, so data-parallel ranks can all-reduce them and whiten with
    the statistics of the global batch."""
    x, m = x.double(), mask.double()
    return torch.stack([(x * m).sum(), (x * x * m).sum(), m.sum()])


def moments_mean_std(moments: torch.Tensor) -> tuple[float, float]:
    """(mean, population std) from masked_moments() [sum, sum of squares, count]."""
    s, ss, n = moments.tolist()
    n = max(n, 1.0)
    mean = s / n
    return mean, max(ss / n - mean * mean, 0.0) ** 0.5


def normalize_advantages(returns: torch.Tensor, mask: torch.Tensor, moments: torch.Tensor | None = None,
                         eps: float = 1e-8) -> torch.Tensor:
    """Whiten returns over every masked token of the batch: A = (G - mean) / (std + eps).

    returns [B, T], mask [B, T], moments: masked_moments() of the global batch (default: this batch)
    -> [B, T], zero off the mask. std is the population std over tokens.

    As in REINFORCE++, the KL penalty is inside the returns, so a batch whose rewards are all equal
    still gets unit-variance advantages: a full-size step that only pulls toward the reference
    (docs/credit.md, the beta=0 ablation, measures what this does; `guarded_advantages` avoids it).
    """
    mean, std = moments_mean_std(moments if moments is not None else masked_moments(returns, mask))
    return (returns - mean) / (std + eps) * mask


def reward_returns(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The reward's share of the returns (gamma = 1, reward on the last token): rewards[b] on every
    action token. [B], [B, T] -> [B, T]   (= returns_to_go(token_rewards(rewards, 0, mask, 0), mask))"""
    return rewards.to(mask.dtype)[:, None] * mask


def no_signal(reward_moments: torch.Tensor, min_std: float) -> bool:
    """True if the rewards of the batch barely differ: their std over tokens (masked_moments of
    reward_returns, global batch) is below min_std (0-1 reward scale)."""
    return moments_mean_std(reward_moments)[1] < min_std


def guarded_advantages(rewards: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float,
                       reward_moments: torch.Tensor | None = None, min_std: float = 0.01,
                       eps: float = 1e-8) -> torch.Tensor:
    """Advantages with the reward term whitened alone and the KL term unscaled (--advantage guarded).

    rewards [B], kl [B, T], mask [B, T]; reward_moments: masked_moments(reward_returns(...)) of the
    global batch (default: this batch) -> [B, T], zero off the mask.

        A[b, t] = (rewards[b] - mean) / (std + eps) + K[b, t],   K = returns_to_go(-beta * kl)
    with mean, std over all masked tokens; if std < min_std (no signal) the first term is 0, so only
    the small pull toward the reference is left -- instead of whitening -beta*KL, or a logit coach's
    4th-decimal noise, up to unit-variance advantages as the paper's form does.

    Naive loop:
        values = [rewards[b] for b in range(B) for t in range(T) if mask[b, t]]
        mean, std = mean(values), population_std(values)
        for b in range(B):
            running = 0
            for t in reversed(range(T)):
                if mask[b, t]:
                    running += -beta * kl[b, t]
                    scaled = 0 if std < min_std else (rewards[b] - mean) / (std + eps)
                    A[b, t] = scaled + running
    """
    R = reward_returns(rewards, mask)
    moments = reward_moments if reward_moments is not None else masked_moments(R, mask)
    K = returns_to_go(-beta * kl * mask, mask)
    if no_signal(moments, min_std):
        return K
    mean, std = moments_mean_std(moments)
    return (R - mean) / (std + eps) * mask + K


def loss_weights(mask: torch.Tensor, mode: str, n_tokens: float, n_actions: float) -> torch.Tensor:
    """Each token's weight in the loss of its minibatch. mask [B, T] -> [B, T]

    token: 1 / n_tokens (the minibatch's token mean, SPEC §4); sequence: 1 / (len_b * n_actions)
    (each action's token mean, then the mean over actions: long and short actions count alike).
    n_tokens, n_actions: counts of the whole (global) minibatch, so micro-batches add up.

    Naive loop:
        for b in range(B):
            for t in range(T):
                W[b, t] = mask[b, t] / (n_tokens if mode == "token" else mask[b].sum() * n_actions)
    """
    if mode == "token":
        return mask / max(float(n_tokens), 1.0)
    return mask / (mask.sum(dim=1, keepdim=True).clamp(min=1) * max(float(n_actions), 1.0))


def lr_factor(step: int, warmup: int, total: int, schedule: str = "constant") -> float:
    """The learning-rate multiplier at optimiser step `step` (0-based): a linear warm-up over `warmup`
    steps, then 1 (constant) or a cosine from 1 down to 0.1 at step `total` (the paper's schedule)."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def clipped_policy_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip_eps: float = 0.2, num_tokens: float | None = None,
                        weights: torch.Tensor | None = None):
    """PPO-clipped surrogate, summed over masked tokens and divided by num_tokens (token-level mean).

    logp, logp_old, advantages, mask: [B, T]. num_tokens defaults to mask.sum(); pass the token
    count of the whole minibatch when gradients are accumulated over micro-batches. weights [B, T]
    (`loss_weights`), if given, replace mask / num_tokens.
    Returns (loss scalar, fraction of tokens where the clip was applied: the clipped term is the
    smaller one, i.e. ratio > 1 + eps with A > 0 or ratio < 1 - eps with A < 0, where the token's
    gradient is zero).
    """
    ratio = torch.exp(logp - logp_old)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages
    per_token = -torch.minimum(unclipped, clipped) * mask
    clip_frac = ((clipped < unclipped).float() * mask).sum() / mask.sum().clamp(min=1)
    if weights is not None:
        return (per_token * weights).sum(), clip_frac
    n = mask.sum() if num_tokens is None else num_tokens
    return per_token.sum() / max(float(n), 1.0), clip_frac


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0,
                   chunk: int = 128) -> torch.Tensor:
    """log softmax(logits / temperature) at the sampled tokens, in float32. [B, T, V], [B, T] -> [B, T]

    Dividing by the sampling temperature makes these the log-probs of the distribution the
    actions were actually drawn from.

    Naive (what this computes, forward and gradient):
        F.log_softmax(logits.float() / temperature, -1).gather(-1, tokens[..., None]).squeeze(-1)
    which holds two or three float32 copies of [B, T, V] at once -- 2.3 GiB each for 4 x 1024 tokens
    of a 150k vocabulary. Here only `chunk` positions at a time are in float32, and the backward
    pass writes the logits' gradient chunk by chunk (see _TokenLogprobs).
    """
    return _TokenLogprobs.apply(logits, tokens, float(temperature), int(chunk))


class _TokenLogprobs(torch.autograd.Function):
    """Chunked log-softmax-at-the-token. Saves the logits (alive anyway) and one float per token.

    d out_t / d logits_t = (onehot(token_t) - softmax(logits_t / temperature)) / temperature."""

    @staticmethod
    def forward(ctx, logits, tokens, temperature, chunk):
        lse = torch.empty(tokens.shape, dtype=torch.float32, device=logits.device)
        out = torch.empty_like(lse)
        for s in range(0, logits.shape[1], chunk):
            lg = logits[:, s:s + chunk].float() / temperature
            lse[:, s:s + chunk] = lg.logsumexp(-1)
            out[:, s:s + chunk] = lg.gather(-1, tokens[:, s:s + chunk, None]).squeeze(-1) - lse[:, s:s + chunk]
        ctx.save_for_backward(logits, tokens, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        logits, tokens, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for s in range(0, logits.shape[1], ctx.chunk):
            g = grad_out[:, s:s + ctx.chunk, None].float() / ctx.temperature
            p = (logits[:, s:s + ctx.chunk].float() / ctx.temperature - lse[:, s:s + ctx.chunk, None]).exp_()
            gc = p.mul_(-g).scatter_add_(-1, tokens[:, s:s + ctx.chunk, None], g)
            grad[:, s:s + ctx.chunk] = gc
        return grad, None, None, None
