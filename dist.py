"""Data parallel over several processes (one per GPU), for runs that outgrow one GPU.

    accelerate launch --multi_gpu --num_processes N train.py ...   # N GPUs, or N CPU processes
    torchrun --nproc_per_node N train.py ...                         # the same, without accelerate

Each rank rolls out its own episodes (its share of a global draw of tasks, its own sampling RNG).
Per agent, the baseline's moments and the adapter's gradients are summed over ranks, so every rank
whitens with the global batch's statistics and takes the identical optimiser step: the adapters
stay equal on all ranks without ever being sent. Only rank 0 writes the run folder.

Why not DDP: all agents share one PeftModel, one adapter each. A backward touches one adapter (DDP
would flag the others as unused parameters) and the KL reference pass runs with adapters disabled.
An explicit all-reduce of the acting adapter's gradients before clip + step is simpler and exact.

Alone (no WORLD_SIZE > 1 in the environment) every helper returns its input untouched, so a
single-process run is bit-identical to one without this module.
"""
import atexit
import math
import os
import sys
from dataclasses import replace
from datetime import timedelta

import torch
import torch.distributed as td

# A rank waits at the next collective while rank 0 saves or evaluates; the default timeout (10 min
# for NCCL) is shorter than a long eval of a real model.
TIMEOUT = timedelta(hours=2)


def default_threads() -> int:
    """torch CPU threads for this process when --threads is 0: $OMP_NUM_THREADS if set (the user's
    choice), else the cores this process may run on (sched_getaffinity) that other jobs leave idle
    (minus the 1-minute load average, rounded), capped at torch's default (the physical cores) and
    shared among this machine's ranks ($LOCAL_WORLD_SIZE); at least 1. Why: torch's default threads
    spin-wait for each other on cores other jobs hold; the tiny quick start's 2 steps took 126-193 s
    that way on a busy 2-core machine, 46-50 s with one thread (issue 19)."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) >= 1:
        return int(os.environ["OMP_NUM_THREADS"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    idle = min(cores, torch.get_num_threads(), round(cores - load))
    return max(1, idle // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def active() -> bool:
    return td.is_available() and td.is_initialized() and td.get_world_size() > 1


def world_size() -> int:
    return td.get_world_size() if active() else 1


def rank() -> int:
    return td.get_rank() if active() else 0


def is_main() -> bool:
    return rank() == 0


def init(device: str) -> str:
    """Join the process group when started by a launcher (WORLD_SIZE > 1); returns this rank's device,
    made the current CUDA device (torch.cuda.set_device) so that every torch.cuda call without a
    device -- memory counters, synchronize, the RNG a checkpoint saves -- reads this one, not GPU 0.

    GPUs: NCCL, one GPU per rank (cuda:LOCAL_RANK, rank_device). CPU: gloo. Note `accelerate launch --cpu
    --num_processes N` starts ONE process (SPEC §6); use --multi_gpu, which works on CPU too."""
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cuda = torch.cuda.is_available() and device != "cpu"
    device = use_device(rank_device(device, os.environ, torch.cuda.device_count()) if cuda and launched else device)
    if not launched or td.is_initialized():
        return device
    td.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    atexit.register(td.destroy_process_group)  # torch warns at exit about a group never destroyed
    return device


def use_device(device: str) -> str:
    """Make a cuda:N device the current one (torch.cuda.set_device), so that every torch.cuda call
    without a device -- memory counters, synchronize, empty_cache, bitsandbytes' kernels, the RNG a
    checkpoint saves -- means it, not GPU 0. Returns device. (eval.py and the bench call it too.)"""
    if device.startswith("cuda:") and torch.cuda.is_available():
        torch.cuda.set_device(torch.device(device))
    return device


def rank_device(device: str, env, gpus: int) -> str:
    """The GPU of this rank under a launcher: cuda:$LOCAL_RANK. A --device cuda:N is refused (one
    line), neither kept nor silently replaced: every rank gets the same flags, so one N would put all
    ranks on one GPU (NCCL then fails); choosing the GPUs is CUDA_VISIBLE_DEVICES' job."""
    from config import UserError

    local = int(env.get("LOCAL_RANK", "0"))
    if device.startswith("cuda:"):
        raise UserError(f"--device {device} under a launcher (WORLD_SIZE={env.get('WORLD_SIZE')}): each process "
                        "takes cuda:$LOCAL_RANK; pass --device cuda (or auto) and choose the GPUs with "
                        "CUDA_VISIBLE_DEVICES")
    if local >= gpus:
        raise UserError(f"process LOCAL_RANK={local} has no GPU: {gpus} visible; start at most {gpus} "
                        "processes per machine (or --device cpu)")
    return f"cuda:{local}"


def cuda_rng_state() -> dict:
    """For a checkpoint: this process's CUDA generator (its current device) and the number of
    devices it sees; {} without CUDA. Not get_rng_state_all: a resume that saw fewer GPUs than the
    save indexed past the end of its list and called every checkpoint damaged (issue 29)."""
    if not torch.cuda.is_available():
        return {}
    return {"cuda": torch.cuda.get_rng_state(torch.cuda.current_device()), "cuda_devices": torch.cuda.device_count()}


def set_cuda_rng_state(state: dict) -> None:
    """Restore cuda_rng_state(), or an older checkpoint's list of every device's state. A device
    count unlike the save's is a one-line note, never a refusal: a process samples on its own device
    only (an old list with no entry for it leaves that generator at the seed)."""
    if "cuda" not in state or not torch.cuda.is_available():
        return
    here, count, saved, saved_count = (torch.cuda.current_device(), torch.cuda.device_count(), state["cuda"],
                                       state.get("cuda_devices"))
    if isinstance(saved, (list, tuple)):
        saved_count, saved = len(saved), (saved[here] if here < len(saved) else None)
    if saved_count is not None and saved_count != count:
        print(f"note: the checkpoint was saved seeing {saved_count} CUDA device(s), this process sees {count}: "
              + (f"restored cuda:{here}'s generator" if saved is not None else f"cuda:{here}'s generator starts "
                 "from the seed"), file=sys.stderr, flush=True)
    if saved is not None:
        torch.cuda.set_rng_state(saved, here)


def _wire(t: torch.Tensor) -> torch.Tensor:
    """t where the backend can send it: NCCL moves GPU tensors only, and our moments and counts
    live on the CPU. The result may be t itself (in-place collectives then write into t)."""
    return t.cuda() if td.get_backend() == "nccl" and not t.is_cuda else t


def _all_reduce(t: torch.Tensor, op) -> torch.Tensor:
    work = _wire(t)
    work = work.clone() if work is t else work  # never overwrite the caller's tensor
    td.all_reduce(work, op=op)
    return work.to(t.device)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of t over ranks, on t's device (t itself alone)."""
    return _all_reduce(t, td.ReduceOp.SUM) if active() else t


def sum_float(x: float) -> float:
    return all_sum(torch.tensor([x], dtype=torch.float64)).item() if active() else x


def max_int(n: int) -> int:
    """The largest n over ranks (so every rank runs the same number of collective steps)."""
    return int(_all_reduce(torch.tensor([n], dtype=torch.int64), td.ReduceOp.MAX).item()) if active() else n


def sum_grads(params: list[torch.nn.Parameter]) -> None:
    """Replace each parameter's gradient by its sum over ranks, in one collective.

    A rank with no action in this minibatch has no gradients (None): it contributes zeros, and
    still receives the sum, so it takes the same optimiser step as the others."""
    if not active():
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = all_sum(torch.cat([g.reshape(-1) for g in grads]))
    offset = 0
    for p in params:
        p.grad = flat[offset:offset + p.numel()].view_as(p)
        offset += p.numel()


def broadcast_(tensors: list[torch.Tensor]) -> None:
    """Copy rank 0's values into these tensors on every rank (in place)."""
    if not active():
        return
    with torch.no_grad():
        for t in tensors:
            work = _wire(t.data)
            td.broadcast(work, src=0)
            if work is not t.data:
                t.data.copy_(work)


def gather(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank ([obj] alone). obj must pickle."""
    if not active():
        return [obj]
    out = [None] * world_size()
    td.all_gather_object(out, obj)
    return out


def shard(items: list) -> list:
    """This rank's share of a list every rank holds in the same order: items[rank::world]."""
    return items[rank()::world_size()] if active() else items


def on_main(fn, *args, **kwargs):
    """fn(*args, **kwargs) on rank 0 only; every rank returns its result (or raises its exception)."""
    if not active():
        return fn(*args, **kwargs)
    result, error = None, None
    if is_main():
        try:
            result = fn(*args, **kwargs)
        except Exception as e:  # re-raised on every rank below, so no rank waits forever
            error = e
    box = [(result, error)]
    td.broadcast_object_list(box, src=0)
    result, error = box[0]
    if error is not None:
        raise error
    return result


def barrier() -> None:
    if active():
        td.barrier()


def gather_episodes(episodes: list) -> list:
    """All ranks' episodes (for the metrics of the global batch), without the heavy parts: the task
    object and the token contexts are dropped, token counts stay right. Alone: episodes itself."""
    if not active():
        return episodes
    light = [replace(ep, task=None, actions=[replace(a, messages=[], prompt_ids=[]) for a in ep.actions])
             for ep in episodes]
    return [ep for part in gather(light) for ep in part]


def merge_update_stats(stats: dict) -> dict:
    """One agent's update metrics over all ranks, equal to what one process on the global batch logs:
    counts and losses add up (the loss of a rank is its share of the global minibatch mean), KL and
    clip fraction are means weighted by each rank's trained tokens (both are token means);
    grad_norm, skipped, no_signal and lr are the same on every rank (identical synchronised steps)."""
    if not active():
        return stats
    parts = [p for p in gather(stats) if p["trained"] > 0]
    out = dict(stats, trained=sum(p["trained"] for p in parts), tokens=sum(p["tokens"] for p in parts))
    out["loss"] = sum(p["loss"] for p in parts) if parts else math.nan
    for key in ("kl", "clip_frac"):
        out[key] = sum(p[key] * p["tokens"] for p in parts) / out["tokens"] if out["tokens"] else math.nan
    return out


def rank_states(rng_state) -> dict | None:
    """For a checkpoint: the world size and every rank's RNG state (None alone: format unchanged).
    rng_state: a function returning this rank's RNG state (checkpoint.rng_state)."""
    if not active():
        return None
    return {"world_size": world_size(), "rank_rng": gather(rng_state())}


def resume_rank(state: dict, set_rng_state) -> None:
    """After checkpoint.load (which restored rank 0's RNG): restore this rank's own RNG state.
    A run resumes only with the number of processes it was saved with."""
    from config import UserError

    saved = state.get("world_size", 1)
    if saved != world_size():
        raise UserError(f"this run was saved by {saved} process(es) and resumes only with {saved}; "
                        f"it was started with {world_size()}")
    if active():
        set_rng_state(state["rank_rng"][rank()])
