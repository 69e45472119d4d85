"""What the pretrained laptop model can do before any RL: the pipeline's own numbers.

    python -m experiments.laptop_probe                 # tiny/laptop, 100 held-out problems, k 4, T 0.6
    python -m experiments.laptop_probe --model /tmp/snap --problems 32 --k 2

Runs the untrained pipeline (adapters off: the base model plays every agent) on held-out easy
problems exactly as `eval.py --base` does, lets the coach (the same base, `--preset laptop`'s
logit coach) score every action, and reports:
- formats: the executor writes a ```python block, the code runs, a second action follows, the
  verifier boxes an answer;
- content: the code prints the right answer, the executor's second action boxes what its code
  printed, the verifier boxes what the code printed, final accuracy (avg@k);
- the coach: AUC of its score of the final action against the grader (judge AUC), AUC per agent
  against THE RULE of tiny/transcripts.py, and the parse rate of its replies in generate mode.
Writes results/laptop/probe.json (or --out).
"""
import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from agents import MATH, add_adapters, load_base
from coach_api import make_coach
from config import PRESETS, Config
from eval import run_episodes, summarize
from reward import LLMCoach, parse_score
from tasks.grader import extract_boxed, is_equiv
from tiny.transcripts import committed_number


def auc(scores: list[float], labels: list[bool]) -> float | None:
    """ROC AUC of scores for labels (None unless both classes occur)."""
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(labels, scores)) if len(set(labels)) == 2 else None


def _printed(action) -> str | None:
    """The first line a code action printed, if its code ran."""
    lines = (action.tool_output or "").strip().splitlines() if action and action.tool_status == "ok" else []
    return lines[0].strip() if lines else None


def pipeline_numbers(episodes) -> dict:
    """Format and content rates of the math team over episodes (see the module docstring)."""
    def first(ep, agent, turn=0):
        return next((a for a in ep.actions if a.agent == agent and a.turn == turn), None)

    def rate(xs):
        xs = [bool(x) for x in xs]
        return round(sum(xs) / max(1, len(xs)), 4)

    code = [first(ep, "executor") for ep in episodes]
    twice = [(ep, first(ep, "executor", 1)) for ep in episodes if first(ep, "executor", 1)]
    finals = [(ep, ep.final_action("verifier")) for ep in episodes]
    return {
        "executor/code_block": rate(a is not None and "```python" in a.text for a in code),
        "executor/code_runs": rate(a is not None and a.tool_status == "ok" for a in code),
        "executor/code_right": rate(_printed(a) == ep.task.answer for ep, a in zip(episodes, code)),
        "executor/acts_twice": rate(len(twice) > i for i in range(len(episodes))),
        "executor/boxes_printed": rate(extract_boxed(a.text) == _printed(first(ep, "executor")) for ep, a in twice),
        "verifier/boxed": rate(a is not None and extract_boxed(a.text) is not None for _, a in finals),
        "verifier/boxes_printed": rate(a is not None and extract_boxed(a.text) == _printed(first(ep, "executor"))
                                       for ep, a in finals if _printed(first(ep, "executor"))),
        "solver/right": rate(is_equiv(extract_boxed(first(ep, "solver").text), ep.task.answer)
                             for ep in episodes if first(ep, "solver")),
        "accuracy": rate(ep.correct for ep in episodes), "episodes": len(episodes),
    }


def coach_numbers(episodes) -> dict:
    """The coach's scores against the grader (final action) and against THE RULE (every action)."""
    out = {}
    finals = [(ep.actions[-1].score, bool(ep.correct)) for ep in episodes
              if ep.actions and ep.actions[-1].agent == "verifier" and ep.actions[-1].score is not None]
    out["coach/judge_auc"] = auc([s for s, _ in finals], [c for _, c in finals])
    for agent in ("solver", "executor", "verifier"):
        pairs = [(a.score, committed_number(a) == ep.task.answer) for ep in episodes for a in ep.actions
                 if a.agent == agent and a.score is not None]
        out[f"coach/{agent}_rule_auc"] = auc([s for s, _ in pairs], [r for _, r in pairs])
        out[f"coach/{agent}_score_right"] = round(sum(s for s, r in pairs if r) / max(1, sum(r for _, r in pairs)), 3)
        out[f"coach/{agent}_score_wrong"] = round(sum(s for s, r in pairs if not r) / max(1, sum(not r for _, r in pairs)), 3)
    return out


def parse_rate(model, tokenizer, cfg: Config, episodes, n: int = 48) -> float:
    """Share of generate-mode coach replies with a score line, before any format retry."""
    coach = LLMCoach(model, tokenizer, MATH, "generate", True, cfg.coach_max_new_tokens, cfg.coach_batch_size,
                     answer_for_all=cfg.coach_answer_for_all, compact=cfg.coach_compact)
    items = [(ep, a) for ep in episodes for a in ep.actions][:n]
    convs = [coach.prompt(ep, a) for ep, a in items]
    from rollout import generate, render
    outs = generate(model, tokenizer, [render(tokenizer, c) for c in convs], cfg.coach_max_new_tokens, 0.0,
                    cfg.coach_batch_size)
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids, _ in outs]
    return round(sum(parse_score(t) is not None for t in texts) / max(1, len(texts)), 4)


def probe(model_name: str, problems: int, k: int, temperature: float, seed: int = 0) -> dict:
    cfg = dataclasses.replace(Config(), **(PRESETS["laptop"] | {"model": model_name}))
    tokenizer, model = load_base(cfg.model, False, "cpu")
    model = add_adapters(model, MATH, r=cfg.lora_r, alpha=cfg.lora_alpha)
    coach = make_coach(cfg, model, tokenizer, MATH)
    episodes = run_episodes(model, tokenizer, cfg, MATH, k=k, temperature=temperature, limit=problems,
                            coach=coach, use_adapters=False, seed=seed, progress=sys.stderr.isatty())
    result = {"model": model_name, "problems": problems, "k": k, "temperature": temperature}
    result |= pipeline_numbers(episodes) | coach_numbers(episodes)
    result["coach/generate_parse_rate"] = parse_rate(model, tokenizer, cfg, episodes)
    result["summary"] = {key: v for key, v in summarize(episodes, MATH, k)["summary"].items()
                         if key.startswith(("avg@", "pass@", "coach/judge"))}
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.laptop_probe", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="laptop", help="model folder or 'laptop' (the shipped tiny/laptop)")
    p.add_argument("--problems", type=int, default=100, help="held-out problems (builtin-easy eval split)")
    p.add_argument("--k", type=int, default=4, help="samples per problem")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature")
    p.add_argument("--out", default="results/laptop/probe.json", help="where to write the numbers")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    result = probe(args.model, args.problems, args.k, args.temperature)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for key, v in result.items():
        if key != "summary":
            print(f"{key:32s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
