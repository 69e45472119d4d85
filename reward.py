"""Rewards: the coach's process score for every action, and the outcome grader.

The coach reads an action in context -- the task, the agent's role, exactly what the agent saw,
what it wrote, what its code printed, which files it left -- and answers `PROCESS_SCORE: <0-10>`
(SPEC §3). By default the coach is the shared base model with every adapter disabled.

Two coach modes:
- generate (the paper's): greedy rationale, then the score line. Unparsable -> one format retry
  -> still unparsable: the action is *unscored* (no reward, out of the baseline and the loss,
  counted in the logs). Never a made-up default.
- logit (ours): the prompt ends in "PROCESS_SCORE: " and one forward pass reads the expected score
  under the next-token distribution over 0..10, with the two-token "10" handled exactly.
"""
import re

import torch

from agents import Agent, acting_as
from rollout import Action, Episode, generate, pad_left, prefix_forward, render, shared_prefix

COACH_SYSTEM = ("You are a coach who evaluates the work of one agent in a team of AI agents. "
                "You are fair, specific and strict.")
SCORE_PREFIX = "PROCESS_SCORE: "
RETRY = "Your reply did not end with the score line. Reply with the line PROCESS_SCORE: <integer from 0 to 10> and nothing else."
# "PROCESS_SCORE: 7", "**PROCESS_SCORE**: 8", "Process Score: 7", "PROCESS_SCORE: [7]", "PROCESS_SCORE=4",
# "PROCESS_SCORE: **8**", "PROCESS_SCORE: 7/10"; a sign is read so that "-3" is out of range, not 3.
_SCORE_RE = re.compile(r"PROCESS[\s_]?SCORE\s*\**\s*[:=]\s*[*\[(\s]*([-\u2212+]?\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_score(text: str) -> float | None:
    """The FIRST score line in text (the paper's code takes the first: what a coach writes after its
    verdict is rambling), as a float; None (unscored) if there is none or it is outside 0..10 --
    never clamped, never guessed."""
    m = _SCORE_RE.search(text or "")
    if m is None:
        return None
    value = float(m[1].replace("\u2212", "-"))
    return value if 0.0 <= value <= 10.0 else None


def clip_text(text: str, limit: int) -> str:
    """Keep head and tail of a long text, saying how much was cut."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n[... {len(text) - limit} characters cut ...]\n{text[-half:]}"


def coach_prompt(episode: Episode, action: Action, agents: tuple[Agent, ...], *, reference: str | None,
                 rationale: bool, tool_chars: int = 2000, text_chars: int = 6000, compact: bool = False) -> str:
    """The coach's user message for one action (see the module docstring for what it contains).

    The text that is the same for every action comes first (the job, the team), then what is the
    same for every action of this agent (its role), then this episode's: so the logit coach
    computes the shared head once per step (LLMCoach._logit). The task, which the agent's input
    repeats, is shown once.

    compact (ours, the laptop preset's): the task, the action, its code output and the reference
    only -- no team, role, input or job text -- so a small model's context and compute go to the
    comparison it has to make."""
    agent = next(a for a in agents if a.name == action.agent)
    if compact:
        parts = [f"## Task\n{clip_text(episode.text, text_chars)}",
                 f"## {agent.title}, action {action.turn + 1}\n{clip_text(action.text, text_chars)}"
                 + ("\n[cut off by the length limit]" if action.truncated else "")]
        if agent.uses_code:
            parts.append("## Output of its code\n" + clip_text(action.tool_output or "(no code was run)", tool_chars))
        if reference is not None:
            parts.append(f"## Reference\n{reference}")
        # logit mode: the score follows in the coach's own turn (SCORE_PREFIX); generate mode must
        # be told the line to write (measured: the 1.5B answered a bare "5" to the logit wording)
        parts.append("Explain briefly, then end with the line\nPROCESS_SCORE: <integer from 0 to 10>" if rationale
                     else "Score this action from 0 to 10.")
        return "\n\n".join(parts)
    team = "\n".join(f"{i + 1}. {a.title}" + (" (runs Python)" if a.uses_code else "")
                     for i, a in enumerate(agents))
    seen = "\n\n".join(f"[{m['role']}]\n{m['content']}" for m in action.messages if m["role"] != "system")
    if 40 < len(episode.text) <= text_chars:  # the agent's input quotes the task, shown whole above
        seen = seen.replace(episode.text, "(the task, as above)")
    parts = [
        "## Your job\nScore how well one action of one agent in this team does that agent's job, from 0 "
        "(useless or harmful) to 10 (perfect). Judge this agent only: do not blame it for mistakes in its "
        "input that it could not fix, and do not credit it for its teammates' work.",
        f"## The team, in order\n{team}",
        f"## The agent to evaluate: {agent.title}\nIts role: {agent.role}",
        f"## Task\n{clip_text(episode.text, text_chars)}",
        f"## What the agent saw\n{clip_text(seen, text_chars)}",
        f"## The agent's action {action.turn + 1} of at most {agent.max_actions}\n{clip_text(action.text, text_chars)}"
        + ("\n[cut off by the length limit]" if action.truncated else ""),
    ]
    if agent.uses_code:
        parts.append("## Output of its code\n" + clip_text(action.tool_output or "(no code was run)", tool_chars))
    if episode.workdir is not None:
        parts.append("## File trail\n" + clip_text(file_trail(episode, agents, action), text_chars))
    if reference is not None:
        parts.append(f"## Reference (the agent did not see this)\n{reference}")
    parts.append("Explain briefly, then end with the line\nPROCESS_SCORE: <integer from 0 to 10>" if rationale
                 else "Reply with the line PROCESS_SCORE: <integer from 0 to 10>")
    return "\n\n".join(parts)


def coach_messages(episode: Episode, action: Action, agents: tuple[Agent, ...], *, show_answer: bool,
                   rationale: bool, tool_chars: int = 2000, answer_for_all: bool = False,
                   compact: bool = False) -> list[dict]:
    """The coach's chat for one action: system + user message. The reference is shown only when
    scoring the final agent, and only if show_answer (the paper's choice, SPEC §3); answer_for_all
    shows it for every agent (ours, the laptop preset's: a 3M-parameter coach cannot check sums)."""
    final = action.agent == agents[-1].name or answer_for_all
    reference = reference_for_coach(episode) if (show_answer and final) else None
    text = coach_prompt(episode, action, agents, reference=reference, rationale=rationale, tool_chars=tool_chars,
                        compact=compact)
    return [{"role": "system", "content": COACH_SYSTEM}, {"role": "user", "content": text}]


def file_trail(episode: Episode, agents: tuple[Agent, ...], upto: Action) -> str:
    """Which files each action added or removed, up to and including `upto`, and which files each
    agent that has acted was required to leave but did not -- so a FileNotFoundError downstream is
    blamed on the agent that forgot to save the file, not on the one that tripped over it.

    A requirement counts as met by the files present after the agent's own last action."""
    from tasks.workspace import describe_files

    titles = {a.name: a.title for a in agents}
    before = dict(episode.start_files or {})
    lines = [f"- at the start: {describe_files(before)}"]
    left: dict[str, dict[str, int]] = {}  # agent -> the files after its last action so far
    ever = set(before)
    for a in episode.actions:
        now = a.files_after if a.files_after is not None else before
        ever |= set(now)
        new = {f: n for f, n in now.items() if f not in before}
        gone = [f for f in before if f not in now]
        code = "no code" if a.tool_status is None else f"code: {a.tool_status}"
        lines.append(f"- after {titles.get(a.agent, a.agent)} action {a.turn + 1} ({code}): "
                     f"new files {describe_files(new) if new else 'none'}"
                     + (f"; removed {', '.join(gone)}" if gone else ""))
        left[a.agent], before = now, now
        if a is upto:
            break
    for agent in agents:
        if agent.writes and agent.name in left:
            missing = [f for f in agent.writes if f not in left[agent.name]]
            lines.append(f"- {agent.title} must write {', '.join(agent.writes)}: "
                         + ("MISSING " + ", ".join(f + (" (removed)" if f in ever else " (never written)")
                                                   for f in missing) if missing else "all present"))
    return "\n".join(lines)


def score_distribution(p1: torch.Tensor, p2: torch.Tensor | None, candidates: dict[int, list[int]]) -> torch.Tensor:
    """P(score = s), s = 0..10, from next-token distributions after "PROCESS_SCORE: ".

    p1 [B, V]: distribution of the first score token. p2 [B, V] or None: distribution of the token
    after the first token of the two-token candidate (e.g. "1" of "1","0"). candidates: score ->
    its token ids (one token, or two whose first is itself a one-token candidate).
    Returns [B, 11], rows summing to 1 (mass on out-of-range numbers like "12" is renormalised away).

    Naive loop:
        for b in range(B):
            for s in range(11):
                ids = candidates[s]
                if len(ids) == 2: P[b, s] = p1[b, ids[0]] * p2[b, ids[1]]
                elif ids[0] is the prefix of a two-token candidate:
                    P[b, s] = p1[b, ids[0]] * (1 - sum of p2[b, d] over one-token digits d)
                else: P[b, s] = p1[b, ids[0]]
            P[b] /= P[b].sum()
    """
    prefix = {ids[0] for ids in candidates.values() if len(ids) == 2}
    digits = [ids[0] for s, ids in candidates.items() if len(ids) == 1 and s < 10]
    cols = []
    for s in range(11):
        ids = candidates[s]
        if len(ids) == 2:
            cols.append(p1[:, ids[0]] * p2[:, ids[1]])
        elif ids[0] in prefix:
            cols.append(p1[:, ids[0]] * (1 - p2[:, digits].sum(dim=1)))
        else:
            cols.append(p1[:, ids[0]])
    P = torch.stack(cols, dim=1).clamp(min=0)
    return P / P.sum(dim=1, keepdim=True).clamp(min=1e-12)


class LLMCoach:
    """The coach: the shared base model with adapters disabled (or any causal LM)."""

    def __init__(self, model, tokenizer, agents: tuple[Agent, ...], mode: str = "generate",
                 show_answer: bool = True, max_new_tokens: int = 256, batch_size: int = 16,
                 tool_chars: int = 2000, answer_for_all: bool = False, compact: bool = False,
                 prefill_tokens: int = 1 << 62):
        self.model, self.tokenizer, self.agents, self.mode = model, tokenizer, agents, mode
        self.answer_for_all, self.compact = answer_for_all, compact
        self.show_answer, self.max_new_tokens = show_answer, max_new_tokens
        self.batch_size, self.tool_chars = batch_size, tool_chars
        self.prefill_tokens = prefill_tokens  # a batch's rows x longest prompt (issue 29 item 2)
        self.retries = 0
        self.prefix_cache = True  # logit mode: run the prompts' shared head once (False: the plain path)
        if mode == "logit":
            self.prefix_ids, self.candidates = score_candidates(tokenizer)

    def prompt(self, episode: Episode, action: Action) -> list[dict]:
        return coach_messages(episode, action, self.agents, show_answer=self.show_answer,
                              rationale=self.mode == "generate", tool_chars=self.tool_chars,
                              answer_for_all=self.answer_for_all, compact=self.compact)

    def score(self, items: list[tuple[Episode, Action]]) -> list[float | None]:
        """Process scores 0..10 for (episode, action) pairs, all in batched passes; None = unscored."""
        if not items:
            return []
        convs = [self.prompt(ep, a) for ep, a in items]
        fits = self.fits(convs)
        for (_, a), ok in zip(items, fits):
            if ok is not True:
                a.coach_text = ok
        keep = [i for i, ok in enumerate(fits) if ok is True]
        out: list[float | None] = [None] * len(items)  # too long for the coach: unscored, with the reason
        if not keep:
            return out
        with acting_as(self.model, None):
            if self.mode == "logit":
                for i, s in zip(keep, self._logit([convs[i] for i in keep], [items[i][1].agent for i in keep])):
                    out[i] = s
                return out
            scores, texts = self._generate([convs[i] for i in keep])
        for i, score, text in zip(keep, scores, texts):  # kept so a person can read why (eval.py show)
            items[i][1].coach_text, out[i] = text, score
        return out

    def fits(self, convs: list[list[dict]]) -> list:
        """Per prompt: True if it and the coach's reply fit the model's context, else the reason (a
        str). Checked in tokens before any forward pass: an action can make its prompt huge (a
        flood of files, a long trail), and an over-long pass errors or runs out of memory."""
        context = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        if not context:
            return [True] * len(convs)
        reply = len(self.prefix_ids) + 2 if self.mode == "logit" else self.max_new_tokens + 64  # + the format retry
        out = []
        for c in convs:
            n = len(render(self.tokenizer, c))
            out.append(True if n + reply <= context else
                       f"unscored: the coach prompt has {n} tokens, over the coach's context of {context} "
                       f"less {reply} for its reply")
        return out

    def _generate(self, convs: list[list[dict]]) -> tuple[list[float | None], list[str]]:
        """(scores, the coach's replies); a format retry's reply is appended to the first one."""
        outs = generate(self.model, self.tokenizer, [render(self.tokenizer, c) for c in convs],
                        self.max_new_tokens, temperature=0.0, batch_size=self.batch_size,
                        prefill_tokens=self.prefill_tokens)
        texts = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids, _ in outs]
        scores = [parse_score(t) for t in texts]
        retry = [i for i, s in enumerate(scores) if s is None]
        if retry:  # one format retry (SPEC §3), then the action stays unscored
            self.retries += len(retry)
            again = [convs[i] + [{"role": "assistant", "content": texts[i]}, {"role": "user", "content": RETRY}]
                     for i in retry]
            outs = generate(self.model, self.tokenizer, [render(self.tokenizer, c) for c in again],
                            16, temperature=0.0, batch_size=self.batch_size, prefill_tokens=self.prefill_tokens)
            for i, (ids, _) in zip(retry, outs):
                reply = self.tokenizer.decode(ids, skip_special_tokens=True)
                scores[i] = parse_score(reply)
                texts[i] = f"{texts[i] or '(empty reply)'}\n[after the format retry] {reply or '(empty reply)'}"
        return scores, texts

    @torch.no_grad()
    def _logit(self, convs: list[list[dict]], groups: list | None = None) -> list[float]:
        """One forward pass per batch over prompt + "PROCESS_SCORE: " + the first token of "10".

        The token prefix every prompt shares (the coach's fixed text, coach_prompt) is run once per
        call and its KV cache copied into each batch; batches are formed per group (the agent),
        whose longer shared prefix (the role) is run once per batch. Same scores as the plain
        path (prefix_cache=False) up to float rounding (tests/test_reward.py)."""
        second = next((ids[0] for ids in self.candidates.values() if len(ids) == 2), None)
        seqs = [render(self.tokenizer, c) + self.prefix_ids + ([second] if second is not None else [])
                for c in convs]
        values = torch.arange(11, dtype=torch.float32)
        scores = [0.0] * len(seqs)
        groups = groups if groups is not None and self.prefix_cache else [0] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: (str(groups[i]), len(seqs[i])))
        self.model.eval()
        head = shared_prefix(seqs, keep=2) if self.prefix_cache else 0
        head_cache = self.model(input_ids=torch.tensor([seqs[0][:head]], device=self.model.device),
                                use_cache=True, logits_to_keep=1).cache if head else None
        chunks: list[list[int]] = []
        for i in order:  # a batch holds one group only, so that its rows share the longer prefix
            if chunks and len(chunks[-1]) < self.batch_size and groups[chunks[-1][0]] == groups[i] \
                    and (len(chunks[-1]) + 1) * len(seqs[i]) <= self.prefill_tokens:  # sorted: i is the longest
                chunks[-1].append(i)
            else:
                chunks.append([i])
        for chunk in chunks:
            if head:
                logits = prefix_forward(self.model, [seqs[i] for i in chunk], self.tokenizer.pad_token_id, keep=2,
                                        logits_to_keep=2, head=head, head_cache=head_cache,
                                        use_cache=False)[0].logits.float()
            else:
                ids, mask = pad_left([seqs[i] for i in chunk], self.tokenizer.pad_token_id, self.model.device)
                pos = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos,
                                    logits_to_keep=2, use_cache=False).logits.float()
            if second is None:
                p1, p2 = logits[:, -1].softmax(-1), None
            else:
                p1, p2 = logits[:, -2].softmax(-1), logits[:, -1].softmax(-1)
            expected = score_distribution(p1.cpu(), None if p2 is None else p2.cpu(), self.candidates) @ values
            for i, e in zip(chunk, expected.tolist()):
                scores[i] = e
        return scores


def score_candidates(tokenizer) -> tuple[list[int], dict[int, list[int]]]:
    """Token ids of SCORE_PREFIX and of each score 0..10 as it would follow the prefix."""
    prefix = tokenizer.encode(SCORE_PREFIX, add_special_tokens=False)
    candidates = {}
    for s in range(11):
        full = tokenizer.encode(SCORE_PREFIX + str(s), add_special_tokens=False)
        if full[:len(prefix)] != prefix:
            raise ValueError("the logit coach needs a tokenizer that keeps 'PROCESS_SCORE: ' apart from "
                             "the number after it; use --coach generate with this model")
        candidates[s] = full[len(prefix):]
    ones = {ids[0] for ids in candidates.values() if len(ids) == 1}
    for s, ids in candidates.items():
        if len(ids) > 2 or (len(ids) == 2 and ids[0] not in ones):
            raise ValueError(f"the logit coach cannot read score {s} (tokens {ids}) exactly with this "
                             "tokenizer; use --coach generate")
    return prefix, candidates


def reference_for_coach(episode: Episode) -> str:
    """What the coach may see about the truth when scoring the final agent (the paper's choice)."""
    if hasattr(episode.task, "answer") and isinstance(episode.task.answer, str):
        return f"The correct final answer is {episode.task.answer}."
    o = episode.outcome
    metrics = ", ".join(f"{k} = {v:.4g}" for k, v in o.items() if isinstance(v, float))
    return f"Grader verdict on the submission: {'valid' if o.get('success') else 'invalid'}" + (
        f" ({o.get('reason')})" if o.get("reason") else "") + (f"; {metrics}" if metrics else "")


def grade(episode: Episode, agents: tuple[Agent, ...], backend: str = "fast") -> None:
    """The outcome: sets episode.answer / .correct (math, `--grader` backend), or .outcome and .correct (data)."""
    if episode.workdir is not None:  # data task: score the submission the analyst wrote
        from pathlib import Path

        from tasks import submission
        episode.outcome = submission.score_submission(episode.task, Path(episode.workdir) / "submission.csv")
        episode.correct = bool(episode.outcome["success"])
        return
    from tasks import grader
    final = episode.final_action(agents[-1].name)
    episode.answer = grader.extract_boxed(final.text) if final else None
    episode.correct = grader.is_equiv(episode.answer, episode.task.answer, backend)


def assign_rewards(episodes: list[Episode], mode: str = "process", outcome_weight: float = 0.5) -> None:
    """Set every action's reward in [0, 1] (None = not trained on).

    process: the coach's score / 10 (the method); outcome: every action of an episode gets the
    episode's outcome, 1 or 0 (the ablation baseline); mixed: (1 - w) * score / 10 + w * outcome.
    """
    for ep in episodes:
        outcome = 1.0 if ep.correct else 0.0
        for a in ep.actions:
            process = None if a.score is None else a.score / 10.0
            if mode == "outcome":
                a.reward = outcome
            elif mode == "process":
                a.reward = process
            else:
                a.reward = None if process is None else (1 - outcome_weight) * process + outcome_weight * outcome
