"""Agents as data, and the one model they share.

An agent is one entry in a pipeline: its name (also its LoRA adapter's name and its metric
prefix), its role (the system prompt; the coach reads it too), a template for its input, and how
it may act. Adding an agent is adding one entry.

All agents share ONE base model (4-bit on a GPU: QLoRA) through one LoRA adapter each. The same
base with every adapter disabled is the coach and the KL reference (SPEC §3, §4): no second copy.
"""
import logging
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from models.catalogue import ModelLoadError  # noqa: F401  (re-exported: train.py and eval.py catch it)

# Keep the console for the training table: bitsandbytes logs that an optional CPU kernel package
# is absent, and peft calls a transformers property deprecated in v5 on every forward.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*is deprecated")
warnings.filterwarnings("ignore", message=".*gradient_checkpointing_enable.*is deprecated")  # v6 renames it; same effect


@dataclass(frozen=True)
class Agent:
    name: str                    # adapter name and metric prefix, e.g. "solver"
    title: str                   # how teammates and the coach call it, e.g. "Problem Solver"
    role: str                    # system prompt: who it is and what its action must achieve
    input: str                   # user-turn template: {task}, {files}, {<agent>}, {<agent>_tool}
    max_actions: int = 1         # actions per episode (a code agent acts again after its tool output)
    uses_code: bool = False      # run its ```python blocks in the sandbox
    max_new_tokens: int | None = None  # per-action cap of this agent; None: --max-new-tokens decides
    writes: tuple[str, ...] = ()  # files its actions must leave in the workspace (data task)


MATH = (
    Agent("solver", "Problem Solver",
          "You are the Problem Solver in a team of three agents (Problem Solver -> Code Executor -> "
          "Verifier) that solves math problems. Solve the problem: reason step by step, concisely, "
          "and put your final answer in \\boxed{}.",
          "Problem:\n{task}"),
    Agent("executor", "Code Executor",
          "You are the Code Executor in a team of three agents (Problem Solver -> Code Executor -> "
          "Verifier) that solves math problems. Check the Problem Solver's work by computing with "
          "Python: write code in ```python blocks and print the values you need. The code is run and "
          "you see its output, then you may act once more. End with the answer in \\boxed{}.",
          "Problem:\n{task}\n\nThe Problem Solver's solution:\n{solver}",
          max_actions=2, uses_code=True),
    Agent("verifier", "Verifier",
          "You are the Verifier in a team of three agents (Problem Solver -> Code Executor -> "
          "Verifier) that solves math problems. You see the problem, the Code Executor's last message "
          "and the output of its code. Check them and give the team's final answer in \\boxed{}.",
          "Problem:\n{task}\n\nThe Code Executor's last message:\n{executor}\n\n"
          "Output of its code:\n{executor_tool}"),
)

_DATA_TEAM = ("You are the {title} in a team of three agents (Data Engineer -> Modeler -> Analyst) that "
              "solves a tabular machine-learning task in a shared folder. ")
_DATA_TOOLS = ("Write Python in ```python blocks: they run in the shared folder (pandas, numpy, scikit-learn "
               "and joblib are installed; no internet) and you see the output and may act again: at most 4 "
               "actions in all. Each run is a new Python process: variables do not carry over, only files do. Print "
               "short summaries (shapes, columns, scores), never whole tables. The test answers are hidden: "
               "never search for them or make them up. ")
DATA = (
    Agent("engineer", "Data Engineer",
          _DATA_TEAM.format(title="Data Engineer") + "Your job: prepare the data. " + _DATA_TOOLS +
          "Read train.csv and test.csv with pandas. Build numeric features the same way for both tables, "
          "fitting on train.csv only: fill missing values, encode text columns, drop the id column and the "
          "target. Save with DataFrame.to_pickle / Series.to_pickle: X_train.pkl (train features), "
          "y_train.pkl (the target with its original labels) and X_test.pkl (test features: the same "
          "columns, one row per test.csv row, in test.csv order); save fitted transformers with "
          "joblib.dump (e.g. preprocess.pkl). When all three files are saved, reply without code and say "
          "what you saved.",
          "Task:\n{task}\n\nFiles in the workspace: {files}",
          max_actions=4, uses_code=True, writes=("X_train.pkl", "y_train.pkl", "X_test.pkl")),
    Agent("modeler", "Modeler",
          _DATA_TEAM.format(title="Modeler") + "Your job: train the model. " + _DATA_TOOLS +
          "Load X_train.pkl and y_train.pkl with pandas.read_pickle (the Data Engineer wrote them; do not "
          "redo its work unless a file is missing or broken). Fit a scikit-learn classifier or regressor "
          "that suits the task, check it with cross-validation or a validation split and print the score "
          "for the task's metric. Save the fitted model with joblib.dump(model, 'model.pkl'). When "
          "model.pkl is saved, reply without code and say which model you chose and its validation score.",
          "Task:\n{task}\n\nFiles in the workspace: {files}\n\n"
          "The Data Engineer's last message:\n{engineer}\n\nOutput of its last code:\n{engineer_tool}",
          max_actions=4, uses_code=True, writes=("model.pkl",)),
    Agent("analyst", "Analyst",
          _DATA_TEAM.format(title="Analyst") + "Your job: the submission. " + _DATA_TOOLS +
          "Load model.pkl with joblib.load and X_test.pkl with pandas.read_pickle, predict, and write "
          "submission.csv with DataFrame.to_csv(..., index=False): the id column taken from test.csv and "
          "the target column named as in the task, one row per test.csv row in test.csv order. Where the "
          "task asks for a probability, write the probability of the positive class (predict_proba). Print "
          "the number of rows and the first rows. When submission.csv is written, reply without code.",
          "Task:\n{task}\n\nFiles in the workspace: {files}\n\n"
          "The Data Engineer's last message:\n{engineer}\n\nOutput of its last code:\n{engineer_tool}\n\n"
          "The Modeler's last message:\n{modeler}\n\nOutput of its last code:\n{modeler_tool}",
          max_actions=4, uses_code=True, writes=("submission.csv",)),
)

PIPELINES = {"math": MATH, "data": DATA}


def agent_input(agent: Agent, task_text: str, finals: dict[str, str], tools: dict[str, str],
                files: str = "") -> str:
    """Fill the agent's input template from the task and the previous agents' final actions."""
    fields = {"task": task_text, "files": files}
    fields.update(finals)
    fields.update({f"{name}_tool": out for name, out in tools.items()})
    return agent.input.format_map(_Missing(fields))


class _Missing(dict):
    def __missing__(self, key):  # an upstream agent that did not act, or ran no code
        return "(no code was run)" if key.endswith("_tool") else "(nothing)"


# --------------------------------------------------------------------------------------------
# The shared model


def resolve_model(name: str) -> str:
    """Map a built model's name to its folder: "tiny"/"tiny-50m" (random, built in a second) and the
    catalogue's real models (`python -m models list`; built once from pinned registry wheels, then
    offline). Hub names and folders pass through. config.json keeps the name, so eval and --resume
    find the folder again."""
    from models.build import resolve
    return resolve(name)


def guard_bnb_cpu_repack(model) -> int:
    """Stop bitsandbytes >= 0.49 from repacking 4-bit weights in place on AVX512-BF16 CPUs.

    The first eval-mode no-grad pass through a Linear4bit repacks its weight for a faster CPU
    kernel; afterwards LoRA gradients through it are silently wrong (SPEC §6). No effect on GPU.
    Returns the number of 4-bit layers guarded.
    """
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        return 0
    layers = [m for m in model.modules() if isinstance(m, Linear4bit)]
    for m in layers:
        m.support_avx512bf16_for_cpu = False
    return len(layers)


def load_base(model_name: str, load_in_4bit: bool | None = None, device: str = "auto", dtype: str | None = None):
    """Load (tokenizer, base model) from a Hub name or a local folder.

    4-bit NF4 on CUDA by default, or wherever load_in_4bit=True asks. dtype: --dtype (auto, bf16,
    fp16, fp32: precision.resolve_dtype); None keeps fp32 on CPU (exact, for tests) and auto on
    CUDA. The weights (or the 4-bit compute) take that dtype and every forward runs under its
    autocast (precision.autocast_forward). The tokenizer pads on the left, for batched generation.
    """
    from precision import autocast_forward, resolve_dtype

    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per load is noise next to the step table
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if load_in_4bit is None:
        load_in_4bit = device.startswith("cuda")
    path = resolve_model(model_name)
    if not Path(path).expanduser().exists() and (path.startswith((".", "/", "~")) or path.count("/") > 1):
        raise ModelLoadError(f"model folder '{model_name}' does not exist; pass an existing folder or a Hub "
                             "name with --model, or use --preset tiny")
    compute = resolve_dtype(dtype or ("auto" if device.startswith("cuda") else "fp32"), device)
    kwargs = dict(dtype=compute)
    if load_in_4bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute)
    if device.startswith("cuda"):
        kwargs["device_map"] = {"": torch.device(device).index or 0}
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:  # not found, offline, gated, or not a valid repo id
        reason = " ".join(str(e).split())[:200]
        raise ModelLoadError(
            f"could not load model '{model_name}' ({reason}); pass a local folder or a reachable Hub name "
            "with --model, or use --preset tiny to run offline") from None
    if tokenizer.pad_token is None:  # many base models ship without one; EOS is safe with masks
        tokenizer.pad_token = tokenizer.eos_token
    if not load_in_4bit:
        model.to(device)
    guard_bnb_cpu_repack(model)
    model.requires_grad_(False)
    return tokenizer, autocast_forward(model, compute)


def add_adapters(model, agents, r: int = 16, alpha: int = 32, dropout: float = 0.0,
                 init_from: str | Path | None = None):
    """Wrap the base in a PeftModel with one LoRA adapter per agent (from init_from/<agent> if given).

    dropout defaults to 0 so the log-probs of the update equal those of the rollout (PPO ratio 1
    at the first step). Adapters load trainable: PeftModel.from_pretrained loads frozen otherwise.
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    from precision import keep_lora_inputs

    names = [a.name for a in agents]
    if init_from is not None:
        first = Path(init_from) / names[0]
        peft_model = PeftModel.from_pretrained(model, first, adapter_name=names[0], is_trainable=True)
        for name in names[1:]:
            peft_model.load_adapter(Path(init_from) / name, adapter_name=name, is_trainable=True)
    else:
        config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules="all-linear",
                            task_type="CAUSAL_LM")
        peft_model = get_peft_model(model, config, adapter_name=names[0])
        for name in names[1:]:
            peft_model.add_adapter(name, config)
    keep_lora_inputs(peft_model, model)  # adapters stay fp32 (the master copy), their matmuls autocast
    return peft_model


def adapter_parameters(model, name: str) -> list[torch.nn.Parameter]:
    """The LoRA parameters of one agent's adapter (peft names them '...lora_A.<name>.weight')."""
    return [p for n, p in model.named_parameters() if f".{name}." in n and "lora_" in n]


def make_optimizers(model, agents, lr: float, weight_decay: float = 0.0, warmup_steps: int = 0,
                    betas: tuple[float, float] = (0.9, 0.999), schedule: str = "constant",
                    total_steps: dict[str, int] | None = None):
    """One AdamW (and LR schedule, `rl.lr_factor`) per adapter. total_steps: each agent's planned
    optimiser steps (for --lr-schedule cosine).

    One optimiser over all adapters would move the idle ones: their grads are zero but their Adam
    moments are not (SPEC §6).
    """
    from rl import lr_factor

    optimizers, schedulers = {}, {}
    for a in agents:
        params = adapter_parameters(model, a.name)
        for p in params:  # set_adapter() freezes the others; the optimiser still owns them all
            p.requires_grad_(True)
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas)
        optimizers[a.name] = opt
        total = (total_steps or {}).get(a.name, 1)
        schedulers[a.name] = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step, total=total: lr_factor(step, warmup_steps, total, schedule))
    return optimizers, schedulers


@contextmanager
def acting_as(model, name: str | None):
    """Run the shared model as one agent (its adapter on), or as the coach/reference (name=None:
    every adapter off, i.e. exactly the base model). A model without adapters (a coach loaded on
    its own, --coach-base) is itself for name=None."""
    if name is None and not hasattr(model, "disable_adapter"):  # a plain transformers model
        yield model
    elif name is None:
        with model.disable_adapter():
            yield model
    else:
        model.set_adapter(name)
        yield model
