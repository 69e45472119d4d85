"""Checkpoints that survive a crash at any moment, and an exact resume.

A checkpoint is a folder `checkpoints/step_000042/` holding every agent's adapter (PEFT format),
each agent's optimiser and LR-schedule state, the step, the task sampler's position, every RNG
state, and how long metrics.jsonl / samples.jsonl were at that step. It is written under a
temporary name and renamed into place, so a kill during a save leaves the previous checkpoint
whole; a folder without its final name is never read. `adapters/` at the top of the run folder
always mirrors the newest checkpoint, for `PeftModel.from_pretrained(base, "RUN/adapters/<agent>")`.
"""
import contextlib
import dataclasses
import errno
import functools
import json
import os
import random
import re
import shutil
import socket
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

import dist

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
        if not done and (run_dir / "config.json").exists() and not holds_run(run_dir):
            raise UserError(f"{run_dir} has no checkpoint: its start failed before the first step; run the "
                            f"corrected command with --out-dir {run_dir} (it reuses the folder)")
        if not done:
            raise UserError(f"{run_dir} has no checkpoint to resume from (it stopped before its first save); "
                            f"start it again with --out-dir {run_dir} --overwrite")
        return run_dir, done[-1]
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file, not a folder; pass another --out-dir")
    if holds_run(run_dir) and not cfg.overwrite:
        raise UserError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it or "
                        "--overwrite to replace it")
    return run_dir, None


def holds_run(run_dir: Path) -> bool:
    """Has a run trained here? A folder with only config.json is a start that failed before its
    first step (e.g. a model that did not fit): the corrected command may reuse it."""
    metrics = run_dir / "metrics.jsonl"
    return (run_dir / "config.json").exists() and (bool(checkpoints(run_dir)) or file_size(metrics) > 0)


def finished_message(run_dir: Path, ckpt: Path | None, steps: int) -> str | None:
    """What to tell a user who resumes a run whose last checkpoint is already at --steps; else None
    (also when that checkpoint's state does not read: load_newest then falls back or says why)."""
    if ckpt is None or int(STEP_DIR.match(ckpt.name).group(1)) < steps:
        return None
    try:
        read_state(ckpt)
    except Exception:  # noqa: BLE001 -- damaged: not "finished", the resume path reports it
        return None
    done = int(STEP_DIR.match(ckpt.name).group(1))
    return (f"{run_dir} is finished: its last checkpoint is step {done} (--steps {steps}); to train further, "
            f"pass more steps: python train.py --resume {run_dir} --steps {done + max(1, steps)}")


def start_run_dir(cfg, run_dir: Path, fresh: bool) -> None:
    """Create the run folder and save the resolved config (a new run), after all inputs were checked."""
    from config import save_config

    if fresh:
        with writing(run_dir):
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
    a checkpoint loads with torch.load(weights_only=True). CUDA: this process's device only (dist.py)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": (name, [int(k) for k in keys], int(pos), int(has_gauss),
                                                    float(cached)), "torch": torch.get_rng_state(), **dist.cuda_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    dist.set_cuda_rng_state(state)


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
        # cpu: else every rank of a launcher stages the optimiser state on GPU 0 (issue 29)
        return torch.load(Path(ckpt) / "state.pt", weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise UserError(f"state.pt holds more than tensors and plain values: refused, use a checkpoint this "
                        f"version wrote, from a source you trust ({Path(ckpt) / 'state.pt'}: {first})") from None


def truncate_logs(run_dir: Path, sizes: dict) -> None:
    """Cut metrics.jsonl / samples.jsonl back to their length at the checkpoint, so each step
    appears exactly once after a resume."""
    for name, size in sizes.items():
        path = run_dir / name
        if path.exists() and path.stat().st_size > size:
            with open(path, "r+b") as f:
                f.truncate(size)


# ------------------------------------------------------------------ one writer per run folder
LOCK = "lock"
WRITE_ERRORS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_held: list[tuple[Path, bool]] = []  # (lock file, whether we created its folder), released by one_writer


@contextlib.contextmanager
def writing(folder: Path, fix: str = "pass an --out-dir you can write to, or free space there"):
    """A write under `folder` that fails for want of permission or space becomes one line (UserError)."""
    from config import UserError

    try:
        yield
    except OSError as e:
        if e.errno not in WRITE_ERRORS:
            raise
        raise UserError(f"cannot write to {folder} ({e.strerror or e}{f': {e.filename}' if e.filename else ''}); "
                        f"{fix}") from None


def check_writable(folder: Path, fix: str = "make it writable, or copy the run somewhere you can write") -> None:
    """UserError now, not after an hour of work, if no file can be created in `folder`."""
    probe = Path(folder) / f".write-test-{os.getpid()}"
    with writing(folder, fix):
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        probe.unlink()


def pid_alive(pid: int) -> bool:
    if pid <= 0:  # os.kill(0 or -n, ...) would address a process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def lock_run_dir(run_dir: Path) -> None:
    """Take `run_dir`'s lock file (pid, host, start time; O_EXCL), creating the folder. UserError
    (one line) while another live process holds it. A lock whose pid is dead on this host is stale
    (a killed run) and is taken over with a one-line notice. one_writer releases it."""
    from config import UserError

    run_dir = Path(run_dir)
    path = run_dir / LOCK
    created = not run_dir.exists()
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now().isoformat(timespec="seconds")}
    with writing(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_lock(path)
                if holder == {}:  # released meanwhile
                    continue
                if holder is None and time.time() - path.stat().st_mtime < 60:  # being written, just now
                    raise UserError(f"{path} is being taken by another process; if no run is writing to "
                                    f"{run_dir}, delete it and try again") from None
                holder = holder or {"pid": "?", "host": me["host"], "started": "?"}  # old and unreadable: stale
                if holder["host"] != me["host"] or (holder["pid"] != "?" and pid_alive(holder["pid"])):
                    where = "" if holder["host"] == me["host"] else f" on host {holder['host']}"
                    raise UserError(f"{run_dir} is in use by process {holder['pid']}{where} (since "
                                    f"{holder['started']}); wait for it, or pick another --out-dir "
                                    f"(if that process is gone, delete {path})") from None
                print(f"note: taking over {path}: process {holder['pid']} that left it is gone", file=sys.stderr,
                      flush=True)
                path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me) + "\n")
            _held.append((path, created))
            return
    raise UserError(f"{path}: other processes keep taking this folder's lock; pick another --out-dir")


def read_lock(path: Path) -> dict | None:
    """The holder a lock file names; {} if there is none; None if it is unreadable (a writer killed
    between creating and writing it, if the file is old)."""
    try:
        holder = json.loads(path.read_text())
        if isinstance(holder.get("pid"), int) and isinstance(holder.get("host"), str):
            return holder | {"started": holder.get("started", "?")}
    except FileNotFoundError:  # released meanwhile
        return {}
    except (OSError, ValueError, AttributeError):
        pass
    return None


def release_lock(path: Path, created: bool) -> None:
    """Remove our lock file; remove the folder too if we created it and nothing else is in it."""
    holder = read_lock(path)
    if holder and holder.get("pid") == os.getpid():
        path.unlink(missing_ok=True)
    if created:
        try:
            path.parent.rmdir()  # only if empty: a start that failed before writing anything
        except OSError:
            pass


def one_writer(fn):
    """Decorate the trainer: the run-folder lock it takes is released however it ends."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        depth = len(_held)
        try:
            return fn(*args, **kwargs)
        finally:
            while len(_held) > depth:
                release_lock(*_held.pop())
    return wrapper


# ------------------------------------------------------------------ saving and loading, safely
def save_safely(run_dir: Path, step: int, *args, **kwargs) -> Path:
    """save(), but whatever stops it (a full disk, a read-only folder, Ctrl-C) leaves no temporary
    folder behind and the previous checkpoints as they were; a write that fails is one line."""
    from config import UserError

    try:
        return save(run_dir, step, *args, **kwargs)
    except BaseException as e:
        for tmp in [*(Path(run_dir) / "checkpoints").glob(".tmp_step_*"), Path(run_dir) / ".tmp_adapters"]:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in WRITE_ERRORS:
            done = checkpoints(run_dir)
            last = f"the last intact checkpoint is {done[-1].name}" if done else "no checkpoint was written yet"
            raise UserError(f"could not save checkpoint step_{step:06d} in {run_dir} ({e.strerror or e}); {last}; "
                            f"free space, then: python train.py --resume {run_dir}") from None
        raise


def load_newest(run_dir: Path, *args) -> dict:
    """load() from the newest checkpoint that loads. A damaged one (a truncated state or adapter
    file) is passed over, saying so in one line. UserError if none loads."""
    from config import UserError

    damaged = []
    for ckpt in reversed(checkpoints(run_dir)):
        try:
            state = load(ckpt, *args)
        except Exception as e:  # whatever a damaged file raises (zip, pickle, safetensors, EOF, key errors)
            damaged.append(f"{ckpt.name} ({type(e).__name__}: {' '.join(str(e).split())[:100]})")
            continue
        if damaged:
            print(f"warning: damaged checkpoint {', '.join(damaged)}; resuming from {ckpt.name} instead",
                  file=sys.stderr, flush=True)
        return state
    raise UserError(f"no checkpoint of {run_dir} loads: {'; '.join(damaged)}; start again with --overwrite")
