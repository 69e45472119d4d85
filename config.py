"""One flat config. Every field has a default and a one-line help; the CLI is generated from it.

    python train.py --task math --preset tiny --steps 5 --lr 1e-3

A preset sets several fields at once; flags given on the command line win over the preset.
Unknown flags, wrong types and out-of-range values fail with one line and exit code 2.
"""
import argparse
import dataclasses
import json
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path


class UserError(Exception):
    """Bad input from the user (flags, files, folders): reported as one line, exit code 2."""


def opt(default, help: str, choices=None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class Config:
    # what to train
    task: str = opt("math", "pipeline: math (solver -> executor -> verifier) or data", ("math", "data"))
    preset: str = opt("", "tiny: a tiny random model on CPU, the whole loop in minutes", ("", "tiny"))
    model: str = opt("Qwen/Qwen2.5-1.5B-Instruct", "Hub name or local folder of the shared base model ('tiny' builds one offline)")
    data: str = opt("builtin", "training tasks: builtin, a .json/.jsonl file or a Hub dataset (math); builtin or a task folder (data)")
    eval_data: str = opt("builtin", "held-out tasks for evaluation, same forms as --data")
    load_in_4bit: typing.Optional[bool] = opt(None, "load the base in 4-bit NF4 (QLoRA); default: on when CUDA is available")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    # rollouts
    steps: int = opt(200, "training steps (one rollout batch and one update per agent each)")
    problems_per_step: int = opt(16, "tasks per rollout batch")
    samples_per_problem: int = opt(2, "episodes per task in a rollout batch")
    temperature: float = opt(1.0, "sampling temperature of the agents during training")
    max_new_tokens: int = opt(1024, "cap on the length of any action, in tokens")
    gen_batch_size: int = opt(32, "sequences per batched generate call")
    code_timeout: float = opt(10.0, "seconds a code action may run in the sandbox")
    code_memory_mb: int = opt(2048, "memory limit of a code action, MB")
    # the coach and the reward
    coach: str = opt("generate", "generate: rationale then score (paper); logit: expected score from one forward pass", ("generate", "logit"))
    coach_max_new_tokens: int = opt(256, "tokens the coach may write in generate mode")
    coach_batch_size: int = opt(16, "actions per batched coach pass")
    coach_sees_answer: bool = opt(True, "show the reference answer to the coach when it scores the final agent (paper: on)")
    coach_url: str = opt("", "OpenAI-compatible endpoint of a coach served elsewhere, e.g. http://localhost:8000/v1 (default: the local base, adapters off)")
    coach_model: str = opt("", "model name the --coach-url endpoint serves")
    coach_api_key_env: str = opt("OPENAI_API_KEY", "environment variable holding the endpoint's API key (unset: no key is sent)")
    coach_concurrency: int = opt(16, "requests in flight at once to --coach-url")
    coach_timeout: float = opt(120.0, "seconds one request to --coach-url may take")
    coach_retries: int = opt(3, "retries of a failed request (429, 5xx, timeout, unreadable reply) before the action is unscored")
    reward: str = opt("process", "process: coach score per action; outcome: episode result for every action; mixed", ("process", "outcome", "mixed"))
    outcome_weight: float = opt(0.5, "weight of the outcome in --reward mixed")
    # the update
    lr: float = opt(2e-5, "learning rate of every adapter (LoRA wants more than the paper's full fine-tune 1e-6)")
    beta: float = opt(0.01, "KL penalty coefficient against the base model (adapters off)")
    clip_eps: float = opt(0.2, "PPO clip range of the probability ratio")
    ppo_epochs: int = opt(1, "optimiser passes over each rollout batch")
    minibatch_size: int = opt(16, "actions per optimiser step")
    micro_batch_size: int = opt(4, "actions per forward/backward pass (gradient accumulation)")
    max_grad_norm: float = opt(1.0, "gradient-norm clip per adapter")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    warmup_steps: int = opt(0, "linear learning-rate warm-up, in optimiser steps")
    lora_r: int = opt(16, "LoRA rank of each adapter")
    lora_alpha: int = opt(32, "LoRA alpha of each adapter")
    gradient_checkpointing: bool = opt(True, "recompute activations in the update to save memory (never in rollouts)")
    # bookkeeping
    seed: int = opt(0, "random seed")
    out_dir: str = opt("", "run folder (default: runs/<task>-<date>-<time>)")
    save_every: int = opt(10, "save a checkpoint every N steps (and at the end)")
    keep_checkpoints: int = opt(2, "how many recent checkpoints to keep")
    eval_every: int = opt(0, "evaluate on held-out tasks every N steps (0: off; use eval.py)")
    eval_problems: int = opt(32, "held-out tasks per evaluation")
    log_samples: int = opt(2, "sample episodes per step saved to samples.jsonl (eval.py show)")
    resume: str = opt("", "continue the run in this folder from its last checkpoint")
    overwrite: bool = opt(False, "allow starting a new run in a folder that already holds one")


PRESETS = {
    "tiny": dict(model="tiny", steps=20, problems_per_step=4, samples_per_problem=2, max_new_tokens=48,
                 gen_batch_size=16, coach="logit", coach_batch_size=16, lr=1e-3, lora_r=8, lora_alpha=16,
                 minibatch_size=8, micro_batch_size=8, gradient_checkpointing=False, code_timeout=5.0,
                 eval_problems=8, save_every=10),
}


def validate(cfg: Config) -> Config:
    """Raise UserError on the first out-of-range value."""
    checks = [
        (cfg.steps >= 1, "--steps must be >= 1"),
        (cfg.problems_per_step >= 1 and cfg.samples_per_problem >= 1, "--problems-per-step and --samples-per-problem must be >= 1"),
        (cfg.temperature >= 0, "--temperature must be >= 0"),
        (cfg.max_new_tokens >= 1, "--max-new-tokens must be >= 1"),
        (min(cfg.gen_batch_size, cfg.coach_batch_size, cfg.minibatch_size, cfg.micro_batch_size) >= 1, "batch sizes must be >= 1"),
        (cfg.code_timeout > 0 and cfg.code_memory_mb > 0, "--code-timeout and --code-memory-mb must be > 0"),
        (0 <= cfg.outcome_weight <= 1, "--outcome-weight must be in [0, 1]"),
        (cfg.lr > 0, "--lr must be > 0"),
        (cfg.beta >= 0, "--beta must be >= 0"),
        (cfg.clip_eps > 0, "--clip-eps must be > 0"),
        (cfg.ppo_epochs >= 1, "--ppo-epochs must be >= 1"),
        (cfg.max_grad_norm > 0, "--max-grad-norm must be > 0"),
        (cfg.lora_r >= 1 and cfg.lora_alpha >= 1, "--lora-r and --lora-alpha must be >= 1"),
        (cfg.save_every >= 1 and cfg.keep_checkpoints >= 1, "--save-every and --keep-checkpoints must be >= 1"),
        (cfg.eval_every >= 0 and cfg.eval_problems >= 1 and cfg.log_samples >= 0, "--eval-every, --eval-problems, --log-samples out of range"),
        (cfg.coach_max_new_tokens >= 1, "--coach-max-new-tokens must be >= 1"),
        (not cfg.coach_url or cfg.coach_url.startswith(("http://", "https://")), "--coach-url must start with http:// or https://"),
        (not cfg.coach_url or cfg.coach_model, "--coach-url needs --coach-model (the model name the endpoint serves)"),
        (not cfg.coach_url or cfg.coach == "generate", "a --coach-url coach writes its score (no logits): pass --coach generate"),
        (cfg.coach_concurrency >= 1 and cfg.coach_timeout > 0 and cfg.coach_retries >= 0,
         "--coach-concurrency must be >= 1, --coach-timeout > 0, --coach-retries >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    return cfg


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
        help_text = f"{f.metadata['help']} (default: {f.default!r})"
        if kind in (bool, typing.Optional[bool]):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            parser.add_argument(flag, type=kind, choices=f.metadata.get("choices"), help=help_text,
                                metavar=f.name.upper())
    return parser


# What may change when a run is resumed (bookkeeping, and where the same coach is served from):
# everything else would make the resumed run a different run.
RESUME_FLAGS = {"resume", "steps", "save_every", "keep_checkpoints", "eval_every", "log_samples",
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
    return validate(Config(**values))


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
    """The resolved config of a run folder; UserError if the folder is not a run."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a run folder (no config.json); pass the folder train.py wrote")
    try:
        values = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(Config)}
        return Config(**{k: v for k, v in values.items() if k in known})
    except (json.JSONDecodeError, TypeError) as e:
        raise UserError(f"{path} is not a valid run config ({e})") from None


def fail(message: str) -> typing.NoReturn:
    """Print one error line and exit 2 (bad input: nothing has been written or lost)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)
