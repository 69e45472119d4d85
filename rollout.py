"""Roll out a batch of episodes, stage by stage.

Every agent acts on all episodes of the batch at once: one batched `generate` per stage and turn
(left padding, length-sorted chunks), not one episode at a time. A code agent's ```python blocks
run in the sandbox in parallel; the output goes back as a tool turn rendered by the tokenizer's
own chat template, and the agent may act again.

Each Action keeps the exact token context it was generated from (`prompt_ids`) and its sampled
tokens (`action_ids`), so the update trains on precisely what the policy saw (SPEC §2: the
official code stored the wrong context for an agent's second action).
"""
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

import sandbox
from agents import Agent, acting_as, agent_input
from tasks.workspace import describe_files, new_workspace, workspace_files


@dataclass
class Action:
    agent: str                  # name of the agent that acted
    turn: int                   # 0-based index of this action among the agent's actions in the episode
    messages: list[dict]        # the conversation it was generated from (readable form of prompt_ids)
    prompt_ids: list[int]       # the exact token context
    action_ids: list[int]       # sampled tokens, ending with an end-of-turn token unless truncated
    text: str
    truncated: bool             # cut off by the length limit: zero loss (SPEC §4)
    tool_output: str | None = None   # sandbox result as the agent and coach read it
    tool_status: str | None = None   # ok | error | timeout | killed; None when no code ran
    files_after: dict[str, int] | None = None  # workspace {file: bytes} after the action (data task)
    score: float | None = None  # coach process score 0..10; None = unscored (excluded, counted)
    reward: float | None = None  # what the update uses, in [0, 1]; None = not trained on
    coach_text: str | None = None  # the coach's rationale in generate mode (eval.py show), else None
    logprobs: list[float] | None = None  # per action token, as sampled; the update's old policy (train.py)


@dataclass
class Episode:
    task: Any                   # a tasks.problems.Problem or a tasks.tabular.TabularTask
    text: str                   # the task as the agents read it
    actions: list[Action] = field(default_factory=list)
    workdir: str | None = None  # shared workspace (data task); None: each code action gets a fresh one
    start_files: dict[str, int] | None = None  # workspace {file: bytes} before the first action
    answer: str | None = None   # the episode's answer (math: the final agent's last \boxed{})
    correct: bool | None = None
    outcome: dict = field(default_factory=dict)  # grader details (data task metrics)
    error: str | None = None    # set if the episode failed during rollout; it is then dropped

    def final_action(self, agent: str) -> Action | None:
        mine = [a for a in self.actions if a.agent == agent]
        return mine[-1] if mine else None


def render(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation plus the assistant prefix, via the tokenizer's chat template.

    Templates without a tool role (or system role) get the turn folded into a user turn instead.
    """
    try:
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                             return_dict=False)
    except Exception:  # jinja raises on unsupported roles; fold them into user turns
        folded, system = [], ""
        for m in messages:
            if m["role"] == "system":
                system = m["content"] + "\n\n"
            elif m["role"] == "tool":
                folded.append({"role": "user", "content": "Tool output:\n" + m["content"]})
            else:
                folded.append(dict(m))
        if folded and folded[0]["role"] == "user":
            folded[0]["content"] = system + folded[0]["content"]
        return tokenizer.apply_chat_template(folded, add_generation_prompt=True, tokenize=True,
                                             return_dict=False)


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


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, temperature: float,
             batch_size: int, logprobs: list | None = None) -> list[tuple[list[int], bool]]:
    """Sample one action per prompt, batched. Returns [(action_ids, truncated)] in prompt order.

    Sampling is from the model's plain softmax at `temperature` (sample_rows applies the temperature
    and nothing else: no setting of the model's generation config), so the update's log-probs are
    the true policy's.
    If `logprobs` is a list, it receives, per prompt, the log-probs of the sampled tokens under
    the distribution they were drawn from (what the update's old policy computes, SPEC §4).
    Prompts are sorted by length before chunking, which cuts padding; within a chunk, a row that
    has ended leaves the batch and its KV cache (sample_rows), so the chunk's last steps run on the
    unfinished rows only.
    """
    stops = stop_ids(model, tokenizer)
    model.eval()  # KV cache on, no dropout, no gradient checkpointing
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[tuple[list[int], bool]] = [([], True)] * len(prompts)
    scores: list[list[float]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        sampled = sample_rows(model, [prompts[i] for i in chunk], tokenizer.pad_token_id, max_new_tokens,
                              temperature, stops)
        for i, (row, lps, truncated) in zip(chunk, sampled):
            results[i], scores[i] = (row, truncated), lps
    if logprobs is not None:
        logprobs[:] = scores
    return results


def sample_rows(model, prompts: list[list[int]], pad_id: int, max_new_tokens: int, temperature: float,
                stops: set[int]) -> list[tuple[list[int], list[float], bool]]:
    """The sampling loop over the model's forward with its KV cache; finished rows leave the batch.

    prompts (B token lists) -> per row (tokens, their log-probs, truncated). A row ends at its
    first stop token (kept) or after max_new_tokens (truncated). The prompts' shared head (the
    agent's system prompt) is computed once (prefix_forward).

    Sampling applies ONLY the temperature: softmax(logits / temperature), then one multinomial draw
    per row -- no top-k/top-p, no repetition penalty, whatever the model's generation_config says
    (temperature 0: greedy). So the log-probs recorded here, and the update's, are the true policy's.
    A finished row is dropped from the batch and from every cache layer (batch_select_indices),
    which changes no other row's numbers: rows never attend to each other.
    """
    B = len(prompts)
    tokens: list[list[int]] = [[] for _ in range(B)]
    lps: list[list[float]] = [[] for _ in range(B)]
    truncated = [True] * B
    rows = torch.arange(B)  # original row index of each row still in the batch
    if B > 1 and shared_prefix(prompts) > 0:
        out, mask = prefix_forward(model, prompts, pad_id, keep=1, logits_to_keep=1)
    else:
        ids, mask = pad_left(prompts, pad_id, model.device)
        out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    use_cache=True, logits_to_keep=1)
    pos = mask.sum(-1) - 1  # position of each row's last token
    stop = torch.tensor(sorted(stops), dtype=torch.long, device=mask.device)
    for step in range(max_new_tokens):
        logits = out.logits[:, -1].float()
        if temperature > 0:
            logp = torch.log_softmax(logits / temperature, -1)
            nxt = torch.multinomial(logp.exp(), 1).squeeze(1)
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
        keep = (~ended).nonzero().squeeze(1)
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
                   head: int = 0, head_cache=None):
    """Forward over seqs (no padding in them) whose shared prefix is computed once: (output with
    its KV cache, attention mask [B, prefix + S]).

    The prefix runs as one row (extending head_cache, a batch-1 cache of the first `head` tokens,
    which is copied, not changed), its cache is repeated per row, and each row's rest runs
    left-padded BETWEEN the prefix and the row -- masked, positions continuing from the prefix --
    so every row's last token sits at the end. Rows never see each other or a pad: the same
    numbers as one left-padded pass up to float rounding (tests/test_policy.py, test_reward.py)."""
    import copy
    dev = model.device
    own = max(shared_prefix(seqs, keep), head)
    cache = copy.deepcopy(head_cache) if head_cache is not None else None
    if own > head:
        cache = model(input_ids=torch.tensor([seqs[0][head:own]], device=dev), cache=cache, use_cache=True,
                      position_ids=torch.arange(head, own, device=dev)[None], logits_to_keep=1).cache
    cache.batch_repeat_interleave(len(seqs))
    ids, mask = pad_left([s[own:] for s in seqs], pad_id, dev)
    mask = torch.cat([mask.new_ones(len(seqs), own), mask], 1)
    pos = (mask.cumsum(-1) - 1)[:, own:]
    return model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True,
                 logits_to_keep=logits_to_keep), mask


def rollout(model, tokenizer, agents: tuple[Agent, ...], episodes: list[Episode], *,
            temperature: float, max_new_tokens: int, batch_size: int,
            limits: "sandbox.Limits", tool_chars: int = 2000, use_adapters: bool = True) -> list[Episode]:
    """Run every agent, in pipeline order, on all episodes; fills episode.actions in place.

    use_adapters=False runs the untrained pipeline: the base model acts as every agent. An episode
    whose own bookkeeping raises (a template error, a prompt longer than the model's context) gets
    `episode.error` and sits out the rest; the batch goes on (the trainer drops and logs it).
    """
    finals: dict[int, dict[str, str]] = {id(ep): {} for ep in episodes}
    tools: dict[int, dict[str, str]] = {id(ep): {} for ep in episodes}
    context = getattr(model.config, "max_position_embeddings", None)
    for ep in episodes:
        if ep.workdir:
            ep.start_files = workspace_files(ep.workdir)
    for agent in agents:
        budget = max_new_tokens if agent.max_new_tokens is None else min(max_new_tokens, agent.max_new_tokens)
        convs = {}
        for ep in live(episodes):
            with episode_guard(ep, agent.name):
                files = describe_files(workspace_files(ep.workdir)) if ep.workdir else ""
                user = agent_input(agent, ep.text, finals[id(ep)], tools[id(ep)], files=files)
                convs[id(ep)] = [{"role": "system", "content": agent.role}, {"role": "user", "content": user}]
        active = live(episodes)
        for turn in range(agent.max_actions):
            prompts = {}
            for ep in active:
                with episode_guard(ep, agent.name):
                    prompts[id(ep)] = render(tokenizer, convs[id(ep)])
                    if context and len(prompts[id(ep)]) + budget > context:
                        raise ValueError(f"prompt of {len(prompts[id(ep)])} tokens + {budget} new tokens "
                                         f"exceeds the model's context of {context}")
            active = live(active)
            if not active:
                break
            scores: list = []
            with acting_as(model, agent.name if use_adapters else None):
                outs = generate(model, tokenizer, [prompts[id(ep)] for ep in active], budget, temperature, batch_size,
                                logprobs=scores)
            actions = []
            for k, (ep, (ids, truncated)) in enumerate(zip(active, outs)):
                text = tokenizer.decode(ids, skip_special_tokens=True)
                action = Action(agent.name, turn, [dict(m) for m in convs[id(ep)]], prompts[id(ep)], ids, text,
                                truncated, logprobs=scores[k] if k < len(scores) else None)
                ep.actions.append(action)
                finals[id(ep)][agent.name] = text
                actions.append(action)
            acted = list(zip(active, actions))
            active = run_code_turn(agent, active, actions, convs, tools, limits, tool_chars) \
                if agent.uses_code else []
            for ep, action in acted:  # the file trail: what each action left, code or not
                if ep.workdir and action.files_after is None:
                    action.files_after = workspace_files(ep.workdir)
    return episodes


def new_episodes(tasks: list, samples: int) -> list[Episode]:
    """`samples` fresh episodes per task (data tasks get a workspace with train.csv and test.csv)."""
    episodes = []
    for task in tasks:
        for _ in range(samples):
            if hasattr(task, "description"):
                episodes.append(Episode(task, task.description, workdir=new_workspace(task)))
            else:
                episodes.append(Episode(task, task.problem))
    return episodes


def live(episodes: list[Episode]) -> list[Episode]:
    return [ep for ep in episodes if ep.error is None]


@contextmanager
def episode_guard(ep: Episode, where: str):
    """Turn an exception in one episode's bookkeeping into episode.error instead of a crash."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 -- any failure of one episode must not end the run
        ep.error = f"{where}: {type(e).__name__}: {e}"


def run_code_turn(agent, episodes, actions, convs, tools, limits, tool_chars) -> list[Episode]:
    """Run the code blocks of this turn's actions in parallel; return the episodes that act again."""
    jobs, owners, scratch = [], [], []
    for ep, action in zip(episodes, actions):
        blocks = sandbox.extract_code_blocks(action.text)
        if not blocks:
            continue
        workdir = ep.workdir or tempfile.mkdtemp(prefix="mappa-")
        if ep.workdir is None:
            scratch.append(workdir)
        jobs.append(("\n\n".join(blocks), workdir))
        owners.append((ep, action))
    try:
        results = sandbox.run_many(jobs, limits) if jobs else []
    finally:
        for d in scratch:
            shutil.rmtree(d, ignore_errors=True)
    again = []
    for (ep, action), result in zip(owners, results):
        action.tool_output = result.as_tool_output(tool_chars)
        action.tool_status = result.status
        tool_turn = action.tool_output
        if ep.workdir:  # the agent sees whether its files were saved before it acts again
            action.files_after = workspace_files(ep.workdir)
            tool_turn += f"\n[Files in the workspace: {describe_files(action.files_after)}]"
        tools[id(ep)][agent.name] = action.tool_output
        if action.turn + 1 < agent.max_actions:
            convs[id(ep)] += [{"role": "assistant", "content": action.text},
                              {"role": "tool", "content": tool_turn}]
            again.append(ep)
    return again
