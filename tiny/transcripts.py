"""The pretraining corpus of the laptop model: scripted math-team episodes with mistakes, and the
coach's verdicts on their actions, rendered exactly as the trainer renders them.

A scripted team (one Python function per agent) plays each built-in training problem the way a
weak, format-perfect team would: the solver reasons line by line and boxes an answer; the executor
writes one line of Python per step of the problem, sees what it printed (the tool turn) and boxes
that; the verifier reports what the code printed. Every agent makes mistakes, drawn fresh on every
pass, so the model learns a *distribution* with room for RL to sharpen it (MISTAKES lists them).

Agent turns are rendered with the real `agents.agent_input`, the tokenizer's chat template and
`sandbox.ExecResult.as_tool_output`; coach documents with `reward.coach_messages`, so the model
sees at train time exactly the text it sees in a run.

THE RULE that labels the coach's training data (so the coach is a learned model of it, noisy
and biased like a real one): an action is good when the number it commits to equals the reference
answer -- the last \\boxed{} of its text, or for a code-only action what its code printed -- and
then scores 8-10; otherwise 0-3. An action that commits to no number scores 0-2.
"""
from __future__ import annotations

import random

from agents import MATH, agent_input
from reward import SCORE_PREFIX, coach_messages
from rollout import Action, Episode
from sandbox import ExecResult
from tasks.grader import extract_boxed

MISTAKES = {  # probability per action, drawn independently on every pass over a problem
    "solver_slip": 0.30,        # one arithmetic result off (the chain continues from it)
    "solver_setup": 0.10,       # one step read with the wrong operation
    "exec_skip": 0.10,          # a step of the problem left out of the code
    "exec_number": 0.12,        # a number mistyped in the code
    "exec_op": 0.06,            # a wrong operator in the code
    "exec_no_code": 0.04,       # no code: boxes the solver's answer
    "exec_copy_solver": 0.08,   # the second action boxes the solver's answer, not the output
    "verifier_typo": 0.08,      # a digit typo in the final answer
    "verifier_problem": 0.07,   # boxes a number taken from the problem
}
_OPS = {"buy": "+", "get": "+", "give": "-", "times": "*", "split": "//", "share": "//"}


def _apply(cur: int, op: str, args: tuple) -> int:
    if op == "buy":
        return cur + args[0] * args[1]
    sym = _OPS[op]
    return {"+": cur + args[0], "-": cur - args[0], "*": cur * args[0], "//": cur // max(args[0], 1)}[sym]


def _typo(n: int, rng: random.Random) -> int:
    """n with one digit changed (never the same number, never negative)."""
    s = list(str(n))
    i = rng.randrange(len(s))
    s[i] = rng.choice([d for d in "0123456789" if d != s[i] and not (i == 0 and d == "0" and len(s) > 1)])
    return int("".join(s))


def _expr(op: str, args: tuple, var: str) -> str:
    return f"{var} + {args[0]} * {args[1]}" if op == "buy" else f"{var} {_OPS[op]} {args[0]}"


def solver_action(steps: tuple, rng: random.Random) -> str:
    """'Start with a.' then one line per step with its result, then the boxed answer."""
    cur = steps[0][1]
    lines = [f"Start with {cur}."]
    slip = rng.randrange(1, len(steps)) if rng.random() < MISTAKES["solver_slip"] else -1
    setup = rng.randrange(1, len(steps)) if rng.random() < MISTAKES["solver_setup"] else -1
    for i, (op, *args) in enumerate(steps[1:], start=1):
        if i == setup:
            op = rng.choice([o for o in ("get", "give", "times") if o != op])
        new = max(_apply(cur, op, tuple(args)), 0)
        if i == slip:
            new = _typo(new, rng)
        lines.append(f"{_expr(op, tuple(args), str(cur))} = {new}.")
        cur = new
    lines.append(f"The answer is \\boxed{{{cur}}}.")
    return "\n".join(lines)


def executor_code(steps: tuple, rng: random.Random) -> tuple[str, int]:
    """(a ```python block with one line per step, the value it prints), mistakes included."""
    lines, cur = [f"x = {steps[0][1]}"], steps[0][1]
    skip = rng.randrange(1, len(steps)) if len(steps) > 2 and rng.random() < MISTAKES["exec_skip"] else -1
    number = rng.randrange(0, len(steps)) if rng.random() < MISTAKES["exec_number"] else -1
    wrong_op = rng.randrange(1, len(steps)) if rng.random() < MISTAKES["exec_op"] else -1
    if number == 0:
        cur = _typo(cur, rng)
        lines[0] = f"x = {cur}"
    for i, (op, *args) in enumerate(steps[1:], start=1):
        if i == skip:
            continue
        args = tuple(args)
        if i == number:
            args = (_typo(args[0], rng),) + args[1:]
        if i == wrong_op:
            op = rng.choice([o for o in ("get", "give", "times") if o != op])
        cur = _apply(cur, op, args)
        lines.append(f"x = {_expr(op, args, 'x')}")
    lines.append("print(x)")
    return "```python\n" + "\n".join(lines) + "\n```", cur


def play(problem, rng: random.Random) -> Episode:
    """One scripted episode of the math team on `problem` (a tasks.problems.Problem with steps)."""
    solver, executor, verifier = MATH
    ep = Episode(problem, problem.problem)
    finals, tools = {}, {}

    def act(agent, messages, text, turn=0, tool=None):
        a = Action(agent.name, turn, [dict(m) for m in messages], [], [], text, False)
        if tool is not None:
            a.tool_output, a.tool_status = tool.as_tool_output(2000), tool.status
        ep.actions.append(a)
        finals[agent.name] = text
        return a

    def chat(agent):
        return [{"role": "system", "content": agent.role},
                {"role": "user", "content": agent_input(agent, ep.text, finals, tools)}]

    s_text = solver_action(problem.steps, rng)
    act(solver, chat(solver), s_text)
    s_answer = extract_boxed(s_text)

    conv = chat(executor)
    if rng.random() < MISTAKES["exec_no_code"]:
        act(executor, conv, f"The solution looks right. \\boxed{{{s_answer}}}")
    else:
        code, printed = executor_code(problem.steps, rng)
        result = ExecResult("ok", f"{printed}\n", "", 0, False, "", 0.0)
        first = act(executor, conv, code, tool=result)
        tools[executor.name] = first.tool_output
        conv = conv + [{"role": "assistant", "content": code}, {"role": "tool", "content": first.tool_output}]
        boxed = s_answer if rng.random() < MISTAKES["exec_copy_solver"] else printed
        act(executor, conv, f"The code prints {printed}. \\boxed{{{boxed}}}", turn=1)

    out = tools.get(executor.name, "").strip().splitlines()
    seen = out[0] if out and out[0].lstrip("-").isdigit() else extract_boxed(finals[executor.name]) or "0"
    answer = int(seen)
    if rng.random() < MISTAKES["verifier_typo"]:
        answer = _typo(abs(answer), rng)
    elif rng.random() < MISTAKES["verifier_problem"]:
        answer = rng.choice([a for _, *args in problem.steps for a in args])
    act(verifier, chat(verifier), f"The code printed {seen}. \\boxed{{{answer}}}")
    return ep


def committed_number(action: Action) -> str | None:
    """The number an action commits to: its last \\boxed{}, else what its code printed."""
    boxed = extract_boxed(action.text)
    if boxed is not None:
        return boxed.strip()
    lines = (action.tool_output or "").strip().splitlines()
    return lines[0].strip() if lines and action.tool_status == "ok" else None


def rule_score(action: Action, answer: str, rng: random.Random) -> int:
    """THE RULE (module docstring): 8-10 if the committed number is the answer, else 0-3."""
    got = committed_number(action)
    if got is None:
        return rng.randint(0, 2)
    return rng.randint(8, 10) if got == answer else rng.randint(0, 3)


def agent_documents(ep: Episode, tokenizer) -> list[tuple[list[int], list[int]]]:
    """One (token ids, loss mask) per agent: its whole conversation, rendered by the chat template
    as the rollout renders it; the loss is on the agent's own turns (every assistant span)."""
    docs, last = [], {}
    for a in ep.actions:
        last[a.agent] = a
    for a in last.values():
        conv = a.messages + [{"role": "assistant", "content": a.text}]
        ids = tokenizer.apply_chat_template(conv, return_dict=False)
        mask = [0] * len(ids)
        for k, m in enumerate(conv):
            if m["role"] == "assistant":
                start = len(tokenizer.apply_chat_template(conv[:k], add_generation_prompt=True, return_dict=False))
                end = len(tokenizer.apply_chat_template(conv[:k + 1], return_dict=False))
                mask[start:end] = [1] * (end - start)
        docs.append((ids, mask))
    return docs


def coach_document(ep: Episode, action: Action, tokenizer, rng: random.Random,
                   rationale: bool = False) -> tuple[list[int], list[int]]:
    """The coach's prompt for one action as the laptop preset's LLMCoach renders it (compact, the
    reference shown for every agent) and the rule's verdict as its reply. rationale: the reply
    first copies the two numbers it compares ("Its answer: 21. Reference: 21."), then scores --
    the generate coach's short rationale, which turns judging into copying and comparing two
    adjacent tokens (a bare score never learned to tell right from wrong: AUC ~0.5)."""
    msgs = coach_messages(ep, action, MATH, show_answer=True, rationale=rationale, answer_for_all=True, compact=True)
    prompt = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, return_dict=False)
    score = rule_score(action, ep.task.answer, rng)
    why = f"Its answer: {committed_number(action) or 'none'}. Reference: {ep.task.answer}. " if rationale else ""
    reply = tokenizer.encode(why + SCORE_PREFIX + str(score), add_special_tokens=False) + [tokenizer.eos_token_id]
    return prompt + reply, [0] * len(prompt) + [1] * len(reply)


def copy_document(tokenizer, rng: random.Random) -> tuple[list[int], list[int]]:
    """A short drill: repeat a list of numbers. Copying numbers out of the context is what the
    team's content needs (the problem's numbers into code, the printed value into \\boxed{}), and
    the transcripts alone teach it slowly (a 10-minute probe never got there): a dense copy
    signal first builds the attention that copies, which the transcripts then use."""
    nums = " ".join(str(rng.randint(0, 10 ** rng.randint(1, 3) - 1)) for _ in range(rng.randint(2, 6)))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": f"Repeat these numbers: {nums}"}],
                                           add_generation_prompt=True, return_dict=False)
    reply = tokenizer.encode(nums, add_special_tokens=False) + [tokenizer.eos_token_id]
    return prompt + reply, [0] * len(prompt) + [1] * len(reply)
