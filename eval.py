"""Evaluate trained teams and the untrained pipeline on held-out tasks; plot and read runs.

    python eval.py RUN                       # the run's agents, k = 4 samples per task at T = 0.6
    python eval.py RUN1 RUN2 --base          # the untrained pipeline, then each run: ONE table,
                                             # with each column's difference to the first
    python eval.py RUN --data examples/aime-sample.json --limit 30 --k 4
    python eval.py plot RUN...               # training curves -> PNG      (viewer.py)
    python eval.py show RUN --step N         # one episode in the terminal (viewer.py)

Each run column writes RUN/eval.json and its episodes to RUN/eval-episodes.jsonl (`show RUN
--eval` renders them); the base column writes eval-base.json / eval-base-episodes.jsonl into the
first run's folder. The base column is the first run's base model with every adapter off.
"""
import argparse
import dataclasses
import gc
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

import checkpoint
import dist
import sandbox
from agents import PIPELINES, ModelLoadError, add_adapters, load_base
from coach_api import CoachGuard, make_coach
from config import INT_MAX, Config, OneLineParser, UserError, check_device, check_range, fail, load_config
from reward import grade
from rollout import Episode, new_episodes, rollout
from runlog import episode_record, judge_auc, mean, rollout_metrics
from tasks import DataError, load_tasks, workspace
from tasks.formats import FORMATS, FieldSpec

JUDGE_THRESHOLD = 5.0  # a coach score >= this counts as the coach calling the final answer right


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k) (Chen et al.
    2021, the Codex paper): the chance that k of the n samples, drawn without replacement, hold at
    least one correct one."""
    if not 0 <= c <= n or k < 1 or n < k:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def default_split(source: str) -> str:
    """Which split to read: the built-in held-out split, else "train" -- the only split of most
    Hub AIME/AMC collections (e.g. AI-MO/aimo-validation-aime). Local files have no splits."""
    from tasks.problems import BUILTIN
    return "eval" if source in BUILTIN else "train"  # builtin-easy too: its eval split is held out


def run_episodes(model, tokenizer, cfg: Config, agents, *, k: int = 4, temperature: float = 0.6,
                 limit: int | None = None, data: str | None = None, split: str | None = None,
                 fields: FieldSpec | None = None, coach=None, use_adapters: bool = True, seed: int = 0, progress: bool = False,
                 desc: str = "eval") -> list[Episode]:
    """Roll out k episodes per held-out task, grade them, and let the coach score every action.
    Returns the episodes, k consecutive ones per task, in task order. An episode whose rollout
    failed (episode.error) is kept and counts as wrong, so avg@k and pass@k stay over k per task.
    ``fields`` (--problem-field etc.) default to the run's own for its --eval-data."""
    from tqdm.auto import tqdm  # tqdm ships with transformers

    torch.manual_seed(seed)
    source = data or cfg.eval_data
    tasks = load_tasks(cfg.task, source, split or default_split(source), fields or FieldSpec.of(cfg))[:limit]
    limits = sandbox.Limits(timeout_s=cfg.code_timeout, memory_mb=cfg.code_memory_mb)
    episodes = []
    chunk = max(1, cfg.gen_batch_size // k)
    with tqdm(total=len(tasks), desc=desc, unit="task", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(tasks), chunk):
            batch = new_episodes(tasks[start:start + chunk], k)
            try:
                rollout(model, tokenizer, agents, batch, temperature=temperature,
                        max_new_tokens=cfg.max_new_tokens, batch_size=cfg.gen_batch_size, limits=limits,
                        use_adapters=use_adapters, prefill_tokens=cfg.prefill_tokens,
                        progress=bar.set_postfix_str)  # the bar moves while a stage decodes
                for ep in batch:
                    grade(ep, agents, backend=cfg.grader)
                    if ep.error:  # kept and counted wrong: the pipeline failed on this task
                        ep.correct = False
                        bar.write(f"episode of task {ep.task.id} failed: {ep.error}", file=sys.stderr)
                if coach is not None:
                    items = [(ep, a) for ep in batch if not ep.error for a in ep.actions]
                    bar.set_postfix_str(f"coach, {len(items)} actions")
                    for (_, a), s in zip(items, coach.score(items)):
                        a.score = s
            finally:  # data task workspaces: the grader and the coach are done with them
                workspace.remove_workspaces(batch)
            episodes += batch
            bar.update(len(tasks[start:start + chunk]))
    return episodes


def evaluate(model, tokenizer, cfg: Config, agents, *, k: int = 4, **kwargs) -> dict:
    """run_episodes + summarize: {"summary": {...}, "by_kind": {...}, "tasks": [...]}. Without a coach
    (train.py's --eval-every) the summary has no coach keys (no score, unscored or coach/*)."""
    coached = kwargs.get("coach") is not None
    return summarize(run_episodes(model, tokenizer, cfg, agents, k=k, **kwargs), agents, k, cfg.task, coached)


# ---------------------------------------------------------------------------------- the summary
def math_metrics(episodes: list[Episode], agents) -> dict:
    """Math only: answer-format compliance, the share of episodes whose final agent wrote a \\boxed{}."""
    return {"format/boxed": mean([float(ep.answer is not None) for ep in episodes])}


# Task-specific summary metrics, by task name: f(episodes, agents) -> {metric: value}. Everything
# else in the summary holds for any pipeline; a new task adds its outcome metrics here.
TASK_METRICS = {"math": math_metrics, "data": lambda episodes, agents: workspace.outcome_summary(episodes)}


def judge_metrics(episodes: list[Episode], final: str, threshold: float = JUDGE_THRESHOLD) -> dict:
    """The coach as a judge of the final agent's last action, against the grader's verdict.

    judge_accuracy: share of scored final actions with (score >= threshold) == correct.
    judge_auc: P(a correct episode's score > a wrong one's), ties count half (Mann-Whitney U), i.e.
    sklearn's roc_auc_score; naive: mean([r > w] + 0.5 [r == w] for r in right for w in wrong).
    Threshold-free, nan unless both outcomes occur. score_correct / score_wrong: mean scores.
    """
    pairs = [(a.score, bool(ep.correct)) for ep in episodes
             if (a := ep.final_action(final)) is not None and a.score is not None]
    right = [s for s, ok in pairs if ok]
    wrong = [s for s, ok in pairs if not ok]
    auc = judge_auc(episodes, final)
    return {"coach/judge_accuracy": mean([float((s >= threshold) == ok) for s, ok in pairs]),
            "coach/judge_auc": auc, "coach/score_correct": mean(right), "coach/score_wrong": mean(wrong)}


def by_kind(episodes: list[Episode], agents) -> dict:
    """Accuracy and mean coach score per agent, per task type (`task.kind`), so coach bias shows:
    {"<kind>/episodes": n, "<kind>/accuracy": x, "<kind>/<agent>_score": s, ...}."""
    groups: dict[str, list[Episode]] = {}
    for ep in episodes:
        groups.setdefault(str(getattr(ep.task, "kind", "all")), []).append(ep)
    out: dict = {}
    for kind, eps in sorted(groups.items()):
        out[f"{kind}/episodes"] = len(eps)
        out[f"{kind}/accuracy"] = mean([float(bool(ep.correct)) for ep in eps])
        for agent in agents:
            out[f"{kind}/{agent.name}_score"] = mean([a.score for ep in eps for a in ep.actions
                                                      if a.agent == agent.name])
    return out


def summarize(episodes: list[Episode], agents, k: int, task: str = "math", coached: bool = True) -> dict:
    """Accuracy (avg@k, unbiased pass@k), per-agent coach score / unscored / action length / tool
    use, the coach as a judge, the task's own metrics (TASK_METRICS), and the same by task type."""
    by_task: dict[str, list[Episode]] = {}
    for ep in episodes:
        by_task.setdefault(ep.task.id, []).append(ep)
    summary = {
        f"avg@{k}": mean([float(bool(ep.correct)) for ep in episodes]),
        f"pass@{k}": mean([pass_at_k(len(eps), sum(bool(e.correct) for e in eps), k) for eps in by_task.values()]),
        "tasks": len(by_task), "episodes": len(episodes), "failed": sum(ep.error is not None for ep in episodes),
    }
    per_agent = ("score_mean", "unscored", "length", "truncated", "tool_use")
    summary |= {key: v for key, v in rollout_metrics(episodes, agents, coached).items()
                if key.split("/")[-1] in per_agent}
    summary |= judge_metrics(episodes, agents[-1].name) if coached else {}
    summary |= TASK_METRICS.get(task, lambda eps, ags: {})(episodes, agents)
    tasks_out = [{"id": tid, "correct": [bool(e.correct) for e in eps], "answers": [e.answer for e in eps]}
                 | ({"outcomes": [e.outcome for e in eps]} if eps[0].workdir is not None else {})
                 for tid, eps in by_task.items()]
    return {"summary": summary, "by_kind": by_kind(episodes, agents), "tasks": tasks_out}


def format_results(results: dict[str, dict], section: str = "summary") -> str:
    """A table of one section ("summary" or "by_kind") with one column per evaluated pipeline and,
    with several, each column's difference to the first (Δ)."""
    names = list(results)
    keys = list(dict.fromkeys(key for r in results.values() for key in r.get(section, {})))
    if not keys:
        return ""
    width = max(len(key) for key in keys) + 2
    cols = [max(10, len(n) + 2) for n in names]
    head = "metric".ljust(width) + "".join(n.rjust(w) for n, w in zip(names, cols)) \
        + "".join(("Δ " + n).rjust(w + 2) for n, w in zip(names[1:], cols[1:]))
    lines = [head]
    for key in keys:
        vals = [r.get(section, {}).get(key) for r in results.values()]
        cells = "".join(("-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)).rjust(w)
                        for v, w in zip(vals, cols))
        deltas = "".join((f"{v - vals[0]:+.3f}" if isinstance(v, float) and isinstance(vals[0], float)
                          and math.isfinite(v - vals[0]) else "").rjust(w + 2) for v, w in zip(vals[1:], cols[1:]))
        lines.append(key.ljust(width) + cells + deltas)
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- the CLI
def parse_eval_args(argv: list[str]) -> argparse.Namespace:
    p = OneLineParser(description="Evaluate MAPPA runs (and the untrained pipeline) on held-out tasks. "
                "Also: eval.py plot RUN... | eval.py show RUN (see eval.py plot --help, show --help).")
    p.add_argument("run_dirs", nargs="+", metavar="RUN", help="run folder(s) written by train.py")
    p.add_argument("--base", action="store_true", help="also evaluate the untrained pipeline (adapters off), as the first column")
    p.add_argument("--base-only", action="store_true", help="evaluate only the untrained pipeline")
    p.add_argument("--k", type=int, default=4, help="samples per task (avg@k, pass@k)")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (paper: 0.6)")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N tasks only")
    p.add_argument("--data", default=None, help="held-out tasks: builtin, a .json/.jsonl/.parquet/.csv file, a saved-dataset folder or a Hub dataset NAME[:CONFIG][@SPLIT] "
                   "(default: the run's --eval-data)")
    p.add_argument("--split", default=None, help="split of a Hub dataset or saved DatasetDict (default: train; builtin: eval); "
                   "or name it in --data: openai/gsm8k:main@test")
    p.add_argument("--problem-field", default=None, help="math sets: the field of the problem text, A+B to join two "
                   "(default: found from the set's shape; without --data: the run's)")
    p.add_argument("--answer-field", default=None, help="math sets: the field of the gold answer (default: as --problem-field)")
    p.add_argument("--answer-format", choices=FORMATS, default=None, help="math sets: how the gold answer is read: auto, "
                   "plain (as is), gsm8k (after ####), boxed (last \\boxed{}) (default: as --problem-field)")
    p.add_argument("--coach", action=argparse.BooleanOptionalAction, default=True, help="score actions with the coach")
    p.add_argument("--coach-mode", choices=("generate", "logit"), default=None,
                   help="coach mode (default: the run's); generate keeps the coach's rationale for show")
    p.add_argument("--coach-base", default="", help="the coach's own model, loaded here (default: the run's --coach-base, else the team's base with adapters off)")
    p.add_argument("--coach-url", default="", help="OpenAI-compatible coach endpoint (never taken from a run's config)")
    p.add_argument("--coach-model", default="", help="model name the --coach-url endpoint serves (default: the run's)")
    p.add_argument("--coach-api-key-env", default="OPENAI_API_KEY", help="environment variable holding the endpoint's API key")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (the same for every column)")
    p.add_argument("--task", choices=sorted(PIPELINES), default=None, help="check that the runs are of this task")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: chosen from the machine, as train.py)")
    args = p.parse_args(argv)
    check_range("--k", args.k, 1, 1024)
    check_range("--temperature", args.temperature, 0, 10)  # 0: greedy
    check_range("--seed", args.seed, 0, INT_MAX)
    if args.limit is not None:
        check_range("--limit", args.limit, 1, 10_000_000)
    check_range("--threads", args.threads, 0, 4096)
    if args.coach_url and not (args.coach_url.startswith(("http://", "https://")) and args.coach_model):
        raise UserError("--coach-url must start with http:// or https:// and needs --coach-model")
    return args


def plan_columns(args) -> list[tuple[str, Path, Config, bool]]:
    """[(column name, run folder, config, is_base)], every input checked before anything loads."""
    run_dirs = [Path(d) for d in args.run_dirs]
    cfgs = [load_config(d) for d in run_dirs]
    if args.task and any(c.task != args.task for c in cfgs):
        wrong, cfg = next((d, c) for d, c in zip(run_dirs, cfgs) if c.task != args.task)
        raise UserError(f"{wrong} is a {cfg.task} run, not {args.task}; drop --task or pick another run")
    if len({c.task for c in cfgs}) > 1:
        raise UserError("these runs train different tasks (" + ", ".join(c.task for c in cfgs) + "); compare runs of one task")
    if (args.base or args.base_only) and len({c.model for c in cfgs}) > 1:
        raise UserError("--base needs runs of one base model; these use " + ", ".join(sorted({c.model for c in cfgs})))
    columns = [("base", run_dirs[0], cfgs[0], True)] if args.base or args.base_only else []
    if not args.base_only:
        for d, cfg in zip(run_dirs, cfgs):
            if not (d / "adapters").is_dir():
                raise UserError(f"{d} has no trained adapters yet (no adapters/ folder); use --base-only or wait for a checkpoint")
            names = [n for n, *_ in columns]
            columns.append((d.name if d.name not in names else str(d), d, cfg, False))
    return columns


def coach_config(cfg: Config, args, run_dir, note: bool = True) -> Config:
    """The run's config with the coach this command asks for: an endpoint and its key variable
    come from this command line only, never from the run folder (it may come from anyone)."""
    from config import ENDPOINT_FIELDS, untrusted_endpoint
    saved = {k: getattr(cfg, k) for k in ENDPOINT_FIELDS}
    given = {k: getattr(args, k) for k in ENDPOINT_FIELDS if getattr(args, k) != getattr(Config, k)}
    endpoint = {**untrusted_endpoint(saved if note else {}, given, run_dir), **given}
    mode = "generate" if endpoint["coach_url"] else args.coach_mode or cfg.coach
    coach_base = "" if endpoint["coach_url"] else args.coach_base or cfg.coach_base
    return dataclasses.replace(cfg, coach=mode, coach_model=args.coach_model or cfg.coach_model,
                               coach_base=coach_base, **endpoint)


def eval_column(name: str, run_dir: Path, cfg: Config, base: bool, args, loaded: dict) -> dict:
    """Evaluate one column; writes its JSON and episodes. `loaded` caches the model of one run
    folder: the base column reuses the first run's model with its adapters off (SPEC §6: exactly
    the base), so base-vs-run loads the model once."""
    agents = PIPELINES[cfg.task]
    if loaded.get("dir") != run_dir:
        loaded.clear()
        gc.collect()  # free the previous run's model before loading the next
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        tokenizer, model = load_base(cfg.model, cfg.load_in_4bit, dist.use_device(cfg.device), cfg.dtype)  # cuda:N current
        trained = (run_dir / "adapters").is_dir()
        model = add_adapters(model, agents, r=cfg.lora_r, alpha=cfg.lora_alpha,
                             init_from=run_dir / "adapters" if trained else None)
        loaded.update(dir=run_dir, model=model, tokenizer=tokenizer)
    model, tokenizer = loaded["model"], loaded["tokenizer"]
    coach = CoachGuard(make_coach(coach_config(cfg, args, run_dir, note=False), model, tokenizer, agents)) if args.coach else None
    t0 = time.perf_counter()
    episodes = run_episodes(model, tokenizer, cfg, agents, k=args.k, temperature=args.temperature,
                            limit=args.limit, data=args.data, split=args.split, fields=eval_fields(cfg, args), coach=coach,
                            use_adapters=not base, seed=args.seed, progress=True, desc=name)
    result = summarize(episodes, agents, args.k, cfg.task)
    result["settings"] = {"run": str(run_dir), "base": base, "k": args.k, "temperature": args.temperature,
                          "limit": args.limit, "data": args.data or cfg.eval_data, "split": args.split,
                          "fields": dataclasses.asdict(eval_fields(cfg, args)),
                          "coach": (args.coach_mode or cfg.coach) if args.coach else None, "seed": args.seed,
                          "seconds": time.perf_counter() - t0}
    stem = "eval-base" if base else "eval"
    with checkpoint.writing(run_dir, "free space there, or copy the run somewhere you can write"):
        write_atomically(run_dir / f"{stem}.json", json.dumps(result, indent=2) + "\n")
        write_atomically(run_dir / f"{stem}-episodes.jsonl",
                         "".join(json.dumps(episode_record(ep)) + "\n" for ep in episodes))
    return result


def write_atomically(path: Path, text: str) -> None:
    """Write a temporary file, then rename it into place: a reader (or a second eval.py) sees the
    old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def eval_fields(cfg: Config, args) -> FieldSpec:
    """How the held-out rows are read: the flags given here; for the run's own --eval-data (no
    --data), the run's saved flags where these are not given. A set named with --data is read by
    this command's flags only: the run's fields describe its own sets."""
    base = FieldSpec.of(cfg) if args.data is None else FieldSpec()
    given = {k: getattr(args, k, None) for k in ("problem_field", "answer_field", "answer_format")}
    return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


def check_columns(columns, args) -> None:
    """Everything eval_column would meet only after loading a model: the held-out tasks, the
    device, the coach endpoint, and whether the run folders take the results. Then the one line
    per held-out set: the shape read, its rows, one problem and its gold answer."""
    summaries = []
    for _, run_dir, cfg, _ in columns:
        check_device(cfg.device)
        source = args.data or cfg.eval_data
        tasks = load_tasks(cfg.task, source, args.split or default_split(source), eval_fields(cfg, args))
        if getattr(tasks, "summary", "") and tasks.summary not in summaries:
            summaries.append(tasks.summary)
        checkpoint.check_writable(run_dir)
        coach_cfg = coach_config(cfg, args, run_dir)  # never the run's own endpoint (issue 15)
        if args.coach and coach_cfg.coach_url:
            from coach_api import check_endpoint
            check_endpoint(coach_cfg)
    for line in summaries:
        print(line, flush=True)


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("plot", "show"):
        import viewer
        return viewer.main(argv)
    try:
        args = parse_eval_args(argv)
        torch.set_num_threads(args.threads or dist.default_threads())
        columns = plan_columns(args)
        check_columns(columns, args)
        results, loaded = {}, {}
        for name, run_dir, cfg, base in columns:
            results[name] = eval_column(name, run_dir, cfg, base, args, loaded)
    except (UserError, DataError, ModelLoadError) as e:
        fail(str(e))
    print(format_results(results))
    print("\nby task type (accuracy, mean coach score per agent):")
    print(format_results(results, "by_kind"))
    for name, run_dir, _, base in columns:
        stem = run_dir / ("eval-base" if base else "eval")
        print(f"{name}: wrote {stem}.json and {stem}-episodes.jsonl")


if __name__ == "__main__":
    main()
