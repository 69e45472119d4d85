"""Roll out a batch of episodes, stage by stage.

Every agent acts on all episodes of the batch at once: one batched `generate` per stage and turn
(generation.py: left padding, length-sorted batches bounded by rows and tokens), not one episode
at a time. A code agent's ```python blocks run in the sandbox in parallel; the output goes back as
a tool turn rendered by the tokenizer's own chat template, and the agent may act again.

Each Action keeps the exact token context it was generated from (`prompt_ids`) and its sampled
tokens (`action_ids`), so the update trains on precisely what the policy saw (SPEC §2: the
official code stored the wrong context for an agent's second action).
"""
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sandbox
from agents import Agent, acting_as, agent_input
from generation import PHASES, generate, pad_left, prefix_forward, sample_rows, shared_prefix, stop_ids  # noqa: F401 (re-exported)
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


def rollout(model, tokenizer, agents: tuple[Agent, ...], episodes: list[Episode], *,
            temperature: float, max_new_tokens: int, batch_size: int,
            limits: "sandbox.Limits", tool_chars: int = 2000, use_adapters: bool = True,
            prefill_tokens: int = 1 << 62, progress=None) -> list[Episode]:
    """Run every agent, in pipeline order, on all episodes; fills episode.actions in place.

    prefill_tokens: token budget of one batch (generation.token_batches). progress(text), if given,
    hears each stage's rows and tokens left while it decodes (train.py: a status line on a terminal).

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
            say = None if progress is None else (
                lambda text, where=f"{agent.name}" + (f" turn {turn + 1}" if turn else ""): progress(f"{where}: {text}"))
            with acting_as(model, agent.name if use_adapters else None):
                outs = generate(model, tokenizer, [prompts[id(ep)] for ep in active], budget, temperature, batch_size,
                                logprobs=scores, prefill_tokens=prefill_tokens, progress=say)
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
    t0 = time.perf_counter()
    try:
        results = sandbox.run_many(jobs, limits) if jobs else []
    finally:
        PHASES["sandbox_s"] += time.perf_counter() - t0
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
