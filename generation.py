"""Batched sampling over the model's forward and KV cache (rollouts, the generate coach, eval).

    generate(model, tokenizer, prompts, max_new_tokens, temperature, batch_size) -> [(tokens, truncated)]

Rows are batched by count AND by a token budget (rows x longest prompt, `prefill_tokens`), so one
prefill never outgrows memory whatever the prompts' lengths (issue 29 item 2). Each row samples
from its own random generator, seeded from one draw of torch's global RNG per call and the row's
index in the call, so a row's tokens do not depend on which rows share its batch (batching gives
the same tokens as one row at a time, tests/test_generation.py). Finished rows leave the batch
and the cache. PHASES accumulates where the time went (prefill / decode), for the benchmark.
"""
import copy
import time
from collections import defaultdict

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

# Seconds and counts per phase since the last PHASES.clear(): prefill_s, prefill_tokens, decode_s,
# decode_steps, decode_tokens (bench/laptop.py reads them; nothing else depends on them).
PHASES: dict[str, float] = defaultdict(float)


class GrowingLayer(DynamicLayer):
    """transformers' DynamicLayer with its keys/values in a buffer written in place and grown by
    half (at least `chunk` positions) when full, instead of a torch.cat per decode step (issue 29
    item 10). keys/values are views of the buffer's first n positions, so the rest of transformers
    reads them as before. Measured on this machine under load: a torch.cat of a 16-row, 430-token
    cache of the 0.5B took 250-1500 ms (allocation and page faults), the in-place write 0.2 ms."""

    is_croppable = False  # crop() would leave the buffer's length behind; nothing here crops
    chunk = 256

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self.buf_k = self.buf_v = None
            self.n = 0
        n, t = self.n, key_states.shape[-2]
        if self.buf_k is None or n + t > self.buf_k.shape[-2]:
            cap = n + t + max(self.chunk, n // 2)
            k = key_states.new_empty(*key_states.shape[:-2], cap, key_states.shape[-1])
            v = value_states.new_empty(*value_states.shape[:-2], cap, value_states.shape[-1])
            if n:
                k[..., :n, :].copy_(self.buf_k[..., :n, :])
                v[..., :n, :].copy_(self.buf_v[..., :n, :])
            self.buf_k, self.buf_v = k, v
        self.buf_k[..., n:n + t, :].copy_(key_states)
        self.buf_v[..., n:n + t, :].copy_(value_states)
        self.n = n + t
        self.keys, self.values = self.buf_k[..., :self.n, :], self.buf_v[..., :self.n, :]
        return self.keys, self.values

    def _rows(self, pick) -> None:  # a new buffer per row change: rare (a row ends, a prefix repeats)
        if self.get_seq_length() > 0:
            self.buf_k, self.buf_v = pick(self.buf_k), pick(self.buf_v)
            self.keys, self.values = self.buf_k[..., :self.n, :], self.buf_v[..., :self.n, :]

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._rows(lambda b: b[indices])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._rows(lambda b: b.repeat_interleave(repeats, dim=0))


def new_cache(model):
    """A DynamicCache of GrowingLayers for `model`, or None (the model's own default) where its
    config asks for other layers (sliding windows), or under autograd (in-place writes into a buffer
    that a backward pass has saved would be an error; the training pass keeps transformers' own)."""
    if torch.is_grad_enabled():
        return None
    try:
        cache = DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 -- a config this cache cannot read: the model builds its own
        return None
    if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    cache.layers = [GrowingLayer() for _ in cache.layers]
    return cache


def stop_ids(model, tokenizer) -> set[int]:
    """Every token id that ends a turn: the generation config's EOS ids and the tokenizer's."""
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
    return ids | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())


def pad_left(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists into (input_ids [B, L], attention_mask [B, L])."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, L - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[i, L - len(s):] = 1
    return ids.to(device), mask.to(device)


def token_batches(lengths: list[int], rows: int, tokens: int) -> list[list[int]]:
    """Indices into `lengths`, shortest first, cut into batches of at most `rows` rows and at most
    `tokens` padded tokens (rows x the batch's longest); a row longer than the budget goes alone.

    [3, 9, 5], rows=2, tokens=12 -> [[0, 2], [1]]   (2 x 5 = 10 <= 12; then 9 alone)
    """
    batches: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        b = batches[-1] if batches else None
        if b is not None and len(b) < rows and (len(b) + 1) * lengths[i] <= tokens:
            b.append(i)  # sorted: the new row is the batch's longest
        else:
            batches.append([i])
    return batches


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, temperature: float,
             batch_size: int, logprobs: list | None = None, prefill_tokens: int = 1 << 62,
             progress=None) -> list[tuple[list[int], bool]]:
    """Sample one action per prompt, batched. Returns [(action_ids, truncated)] in prompt order.

    Sampling is from the model's plain softmax at `temperature` (sample_rows applies the temperature
    and nothing else: no setting of the model's generation config), so the update's log-probs are
    the true policy's.
    If `logprobs` is a list, it receives, per prompt, the log-probs of the sampled tokens under
    the distribution they were drawn from (what the update's old policy computes, SPEC §4).
    Prompts are sorted by length and cut into batches of at most `batch_size` rows and
    `prefill_tokens` padded prompt tokens (token_batches). progress(text), if given, hears the rows
    and tokens left as decoding goes (a status line: runlog.Progress).
    """
    stops = stop_ids(model, tokenizer)
    model.eval()  # KV cache on, no dropout, no gradient checkpointing
    seed = int(torch.randint(0, 2**62, (1,)).item())  # one draw of the global RNG per call
    results: list[tuple[list[int], bool]] = [([], True)] * len(prompts)
    scores: list[list[float]] = [[] for _ in prompts]
    batches = token_batches([len(p) for p in prompts], batch_size, prefill_tokens)
    for n, chunk in enumerate(batches):
        gens = [torch.Generator().manual_seed(seed + i) for i in chunk] if temperature > 0 else None
        say = None if progress is None else (
            lambda rows, made, n=n: progress(f"batch {n + 1}/{len(batches)}, {rows} rows decoding, {made} tokens"))
        sampled = sample_rows(model, [prompts[i] for i in chunk], tokenizer.pad_token_id, max_new_tokens,
                              temperature, stops, gens=gens, progress=say)
        for i, (row, lps, truncated) in zip(chunk, sampled):
            results[i], scores[i] = (row, truncated), lps
    if logprobs is not None:
        logprobs[:] = scores
    return results


def draw(logp: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
    """One token per row from exp(logp) [B, V], row b by inverse CDF with its own generator gens[b]:
    the draw depends on the row's distribution and generator only, never on the other rows. -> [B]"""
    u = torch.stack([torch.rand((), generator=g) for g in gens]).to(logp.device)
    cdf = logp.exp().cumsum(-1)
    u = u * cdf[:, -1]  # the CDF's own total (1 up to rounding): never past the last token
    return torch.searchsorted(cdf, u[:, None], right=True).squeeze(1).clamp(max=logp.shape[1] - 1)


def sample_rows(model, prompts: list[list[int]], pad_id: int, max_new_tokens: int, temperature: float,
                stops: set[int], gens: list[torch.Generator] | None = None,
                progress=None) -> list[tuple[list[int], list[float], bool]]:
    """The sampling loop over the model's forward with its KV cache; finished rows leave the batch.

    prompts (B token lists) -> per row (tokens, their log-probs, truncated). A row ends at its
    first stop token (kept) or after max_new_tokens (truncated). The prompts' shared head (the
    agent's system prompt) is computed once (prefix_forward).

    Sampling applies ONLY the temperature: softmax(logits / temperature), then one draw per row
    from its own generator (draw; gens None: torch.multinomial on the global RNG) -- no top-k/top-p,
    no repetition penalty, whatever the model's generation_config says (temperature 0: greedy). So
    the log-probs recorded here, and the update's, are the true policy's.
    A finished row is dropped from the batch and from every cache layer (batch_select_indices),
    which changes no other row's numbers: rows never attend to each other. The cache is
    transformers' DynamicCache, which grows by torch.cat each step (issue 29 item 10: measured
    small next to reading the weights, BENCHMARKS.md).
    """
    B = len(prompts)
    tokens: list[list[int]] = [[] for _ in range(B)]
    lps: list[list[float]] = [[] for _ in range(B)]
    truncated = [True] * B
    rows = torch.arange(B)  # original row index of each row still in the batch
    t0 = time.perf_counter()
    if B > 1 and shared_prefix(prompts) > 0:
        out, mask = prefix_forward(model, prompts, pad_id, keep=1, logits_to_keep=1)
    else:
        ids, mask = pad_left(prompts, pad_id, model.device)
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    cache=new_cache(model), use_cache=True, logits_to_keep=1)
    t1 = time.perf_counter()
    PHASES["prefill_s"] += t1 - t0
    PHASES["prefill_tokens"] += sum(len(p) for p in prompts)
    pos = mask.sum(-1) - 1  # position of each row's last token
    stop = torch.tensor(sorted(stops), dtype=torch.long, device=mask.device)
    made = 0
    for step in range(max_new_tokens):
        logits = out.logits[:, -1].float()
        if temperature > 0:
            logp = torch.log_softmax(logits / temperature, -1)
            nxt = draw(logp, [gens[r] for r in rows.tolist()]) if gens is not None \
                else torch.multinomial(logp.exp(), 1).squeeze(1)
        else:
            logp = torch.log_softmax(logits, -1)
            nxt = logits.argmax(-1)
        chosen = logp.gather(1, nxt[:, None]).squeeze(1)
        ended = torch.isin(nxt, stop)
        for r, t, lp, e in zip(rows.tolist(), nxt.tolist(), chosen.tolist(), ended.tolist()):
            tokens[r].append(t)
            lps[r].append(lp)
            if e:
                truncated[r] = False
        made += len(rows)
        keep = (~ended).nonzero().squeeze(1)
        if progress is not None:
            progress(int(keep.numel()), made)
        if keep.numel() == 0 or step == max_new_tokens - 1:
            break
        cache = out.cache
        if keep.numel() < len(rows):  # the finished rows leave the batch and the cache
            cache.batch_select_indices(keep)
            rows, mask, pos, nxt = rows[keep.cpu()], mask[keep], pos[keep], nxt[keep]
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], 1)
        pos = pos + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos[:, None],
                    cache=cache, use_cache=True)
        PHASES["decode_steps"] += 1
    PHASES["decode_s"] += time.perf_counter() - t1
    PHASES["decode_tokens"] += made
    return list(zip(tokens, lps, truncated))


def shared_prefix(seqs: list[list[int]], keep: int = 1) -> int:
    """Length of the token prefix all seqs share, leaving at least `keep` tokens of each outside it."""
    n, first = min(len(s) for s in seqs) - keep, seqs[0]
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return max(n, 0)


def prefix_forward(model, seqs: list[list[int]], pad_id: int, *, keep: int, logits_to_keep: int,
                   head: int = 0, head_cache=None, use_cache: bool = True):
    """Forward over seqs (no padding in them) whose shared prefix is computed once: (output with
    its KV cache, attention mask [B, prefix + S]).

    The prefix runs as one row (extending head_cache, a batch-1 cache of the first `head` tokens,
    which is copied, not changed), its cache is repeated per row, and each row's rest runs
    left-padded BETWEEN the prefix and the row -- masked, positions continuing from the prefix --
    so every row's last token sits at the end. Rows never see each other or a pad: the same
    numbers as one left-padded pass up to float rounding (tests/test_policy.py, test_reward.py)."""
    dev = model.device
    own = max(shared_prefix(seqs, keep), head)
    cache = copy.deepcopy(head_cache) if head_cache is not None else new_cache(model)
    if own > head:
        cache = model(input_ids=torch.tensor([seqs[0][head:own]], device=dev), cache=cache, use_cache=True,
                      position_ids=torch.arange(head, own, device=dev)[None], logits_to_keep=1).cache
    cache.batch_repeat_interleave(len(seqs))
    ids, mask = pad_left([s[own:] for s in seqs], pad_id, dev)
    mask = torch.cat([mask.new_ones(len(seqs), own), mask], 1)
    pos = (mask.cumsum(-1) - 1)[:, own:]
    return model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=use_cache,
                 logits_to_keep=logits_to_keep), mask
