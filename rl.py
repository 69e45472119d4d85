"""The RL math of MAPPA's update: REINFORCE with a baseline (the paper's REINFORCE++), as small
pure functions. Tensors in, tensors out; B = actions in the batch, T = action tokens (right-padded).

Per agent, over that agent's actions (SPEC §4):
  1. token rewards: -beta * KL_t on every token, plus the action's reward on its last token;
  2. returns with gamma = 1: G_t = sum of token rewards from t to the end of the action;
  3. the baseline: whiten G over ALL tokens of this agent's batch (no per-prompt groups: downstream
     agents never see the same input twice, so GRPO's group baseline does not apply);
  4. a PPO-clipped surrogate, averaged over tokens.
"""
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


def normalize_advantages(returns: torch.Tensor, mask: torch.Tensor, moments: torch.Tensor | None = None,
                         eps: float = 1e-8) -> torch.Tensor:
    """Whiten returns over every masked token of the batch: A = (G - mean) / (std + eps).

    returns [B, T], mask [B, T], moments: masked_moments() of the global batch (default: this batch)
    -> [B, T], zero off the mask. std is the population std over tokens.

    As in REINFORCE++, the KL penalty is inside the returns, so a batch whose rewards are all equal
    still gets unit-variance advantages: a full-size step that only pulls toward the reference
    (docs/credit.md, the beta=0 ablation, measures what this does).
    """
    s, ss, n = (moments if moments is not None else masked_moments(returns, mask)).tolist()
    n = max(n, 1.0)
    mean = s / n
    std = max(ss / n - mean * mean, 0.0) ** 0.5
    return (returns - mean) / (std + eps) * mask


def clipped_policy_loss(logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor,
                        mask: torch.Tensor, clip_eps: float = 0.2, num_tokens: float | None = None):
    """PPO-clipped surrogate, summed over masked tokens and divided by num_tokens (token-level mean).

    logp, logp_old, advantages, mask: [B, T]. num_tokens defaults to mask.sum(); pass the token
    count of the whole minibatch when gradients are accumulated over micro-batches.
    Returns (loss scalar, fraction of tokens where the clip was active).
    """
    ratio = torch.exp(logp - logp_old)
    unclipped = ratio * advantages
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * advantages
    per_token = -torch.minimum(unclipped, clipped) * mask
    n = mask.sum() if num_tokens is None else num_tokens
    clip_frac = ((unclipped != clipped).float() * mask).sum() / mask.sum().clamp(min=1)
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
