"""Checkpoints that survive a crash at any moment, and an exact resume.

A checkpoint is a folder `checkpoints/step_000042/` holding every agent's adapter (PEFT format),
each agent's optimiser and LR-schedule state, the step, the task sampler's position, every RNG
state, and how long metrics.jsonl / samples.jsonl were at that step. It is written under a
temporary name and renamed into place, so a kill during a save leaves the previous checkpoint
whole; a folder without its final name is never read. `adapters/` at the top of the run folder
always mirrors the newest checkpoint, for `PeftModel.from_pretrained(base, "RUN/adapters/<agent>")`.
"""
import dataclasses
import random
import re
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

STEP_DIR = re.compile(r"^step_(\d{6})$")
RUN_FILES = ("checkpoints", "adapters", "metrics.jsonl", "samples.jsonl", "eval.json", "eval-base.json",
             "eval-episodes.jsonl", "eval-base-episodes.jsonl", "curves.png")


def run_folder(cfg) -> Path:
    """The run folder a config trains into (fixed at the first call, so a default name is stable)."""
    if not cfg.resume and not cfg.out_dir:
        cfg.out_dir = f"runs/{cfg.task}-{datetime.now():%Y%m%d-%H%M%S}"
    return Path(cfg.resume or cfg.out_dir)


def check_run_dir(cfg) -> tuple[Path, Path | None]:
    """The run folder and the checkpoint to resume from (None: a new run). Writes nothing.

    A new run refuses a folder that already holds one, unless --overwrite."""
    from config import UserError

    run_dir = run_folder(cfg)
    if cfg.resume:
        done = checkpoints(run_dir)
        if not done:
            raise UserError(f"{run_dir} has no checkpoint to resume from; start a new run with --out-dir instead")
        return run_dir, done[-1]
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file, not a folder; pass another --out-dir")
    if (run_dir / "config.json").exists() and not cfg.overwrite:
        raise UserError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it or "
                        "--overwrite to replace it")
    return run_dir, None


def start_run_dir(cfg, run_dir: Path, fresh: bool) -> None:
    """Create the run folder and save the resolved config (a new run), after all inputs were checked."""
    from config import save_config

    if fresh:
        for name in RUN_FILES:  # --overwrite: only what a run writes, never anything else in the folder
            path = run_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.json")


class TaskSampler:
    """Endless shuffled passes over the training tasks; its position is part of a checkpoint."""

    def __init__(self, tasks: list, seed: int):
        self.tasks, self.seed, self.epoch, self.pos = tasks, seed, 0, 0
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(len(self.tasks)))
        random.Random(self.seed * 100_003 + epoch).shuffle(order)
        return order

    def take(self, n: int) -> list:
        out = []
        while len(out) < n:
            if self.pos == len(self._order):
                self.epoch, self.pos = self.epoch + 1, 0
                self._order = self._shuffled(self.epoch)
            out.append(self.tasks[self._order[self.pos]])
            self.pos += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._order = self._shuffled(self.epoch)


def rng_state() -> dict:
    """Every RNG's state as tensors and plain values only (numpy's key array as a list of ints), so
    a checkpoint loads with torch.load(weights_only=True)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, [int(k) for k in keys], int(pos), int(has_gauss),
                                                     float(cached)), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def file_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def save(run_dir: Path, step: int, model, agent_names, optimizers, schedulers, sampler, keep: int,
         config=None, extra: dict | None = None) -> Path:
    """Write checkpoints/step_<step>/ atomically, refresh RUN/adapters/, keep the newest `keep`."""
    root = run_dir / "checkpoints"
    root.mkdir(exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(tmp / "adapters", selected_adapters=list(agent_names))
    torch.save({
        "step": step,
        "optimizers": {n: optimizers[n].state_dict() for n in agent_names},
        "schedulers": {n: schedulers[n].state_dict() for n in agent_names},
        "sampler": sampler.state_dict(),
        "rng": rng_state(),
        "log_sizes": {name: file_size(run_dir / name) for name in ("metrics.jsonl", "samples.jsonl")},
        "config": dataclasses.asdict(config) if config is not None else None,
        **(extra or {}),
    }, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)  # only after a crash between rename and cleanup below
    tmp.rename(final)
    mirror = run_dir / "adapters"
    tmp_mirror = run_dir / ".tmp_adapters"
    shutil.rmtree(tmp_mirror, ignore_errors=True)
    shutil.copytree(final / "adapters", tmp_mirror)
    shutil.rmtree(mirror, ignore_errors=True)
    tmp_mirror.rename(mirror)
    for old in checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / "state.pt").is_file())


def load(ckpt: Path, model, agent_names, optimizers, schedulers, sampler) -> dict:
    """Restore adapters, optimisers, schedules, sampler and RNG from a checkpoint; returns its state.
    The state is read first and holds tensors and plain values only: see read_state."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = read_state(ckpt)
    for name in agent_names:
        weights = load_file(str(ckpt / "adapters" / name / "adapter_model.safetensors"))
        set_peft_model_state_dict(model, weights, adapter_name=name)
    for n in agent_names:
        optimizers[n].load_state_dict(state["optimizers"][n])
        schedulers[n].load_state_dict(state["schedulers"][n])
    sampler.load_state_dict(state["sampler"])
    set_rng_state(state["rng"])
    return state


def read_state(ckpt: Path) -> dict:
    """A checkpoint's state.pt, unpickled with torch's weights_only loader: tensors, numbers, text,
    lists, tuples and dicts, never a Python object to build or call. A run folder may come from
    anyone, and a planted pickle would otherwise run its code on --resume (issue 15). UserError
    (one line, exit 2) for anything else, e.g. a checkpoint of an older MAPPA (numpy arrays)."""
    import pickle

    from config import UserError

    try:
        return torch.load(Path(ckpt) / "state.pt", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"{Path(ckpt) / 'state.pt'} holds more than tensors and plain values, refused "
                        f"({first}); use a checkpoint this version wrote, from a source you trust") from None


def truncate_logs(run_dir: Path, sizes: dict) -> None:
    """Cut metrics.jsonl / samples.jsonl back to their length at the checkpoint, so each step
    appears exactly once after a resume."""
    for name, size in sizes.items():
        path = run_dir / name
        if path.exists() and path.stat().st_size > size:
            with open(path, "r+b") as f:
                f.truncate(size)
