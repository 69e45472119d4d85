"""One rank of tests/test_dist.py, started by `accelerate launch`: train the tiny preset through
train.main, resume it for one more step, then write what this rank saw to OUT/rank_<r>.pt.

    python -m accelerate.commands.launch --multi_gpu --num_processes 2 tests/dist_worker.py OUT STEPS ARGS...

Two hooks watch the real code path: the model built by train() (to read this rank's adapters at
the end) and every call of rl.normalize_advantages (this rank's returns, mask and the moments used).
"""
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import dist  # noqa: E402
import rl  # noqa: E402
import train  # noqa: E402


def main() -> None:
    out, steps, args = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
    built, calls = [], []
    add_adapters, normalize = train.add_adapters, rl.normalize_advantages

    def keep_model(*a, **kw):
        built.append(add_adapters(*a, **kw))
        return built[-1]

    def record(returns, mask, moments=None, **kw):
        calls.append({"returns": returns.clone(), "mask": mask.clone(), "moments": moments.clone()})
        return normalize(returns, mask, moments, **kw)

    train.add_adapters, rl.normalize_advantages = keep_model, record
    train.main([*args, "--steps", str(steps)])
    train.main(["--resume", args[args.index("--out-dir") + 1], "--steps", str(steps + 1)])
    adapters = {n: p.detach().clone() for n, p in built[-1].named_parameters() if "lora_" in n}
    torch.save({"rank": dist.rank(), "world_size": dist.world_size(), "pid": os.getpid(),
                "launcher_rank": os.environ.get("RANK"), "adapters": adapters, "calls": calls},
               out / f"rank_{dist.rank()}.pt")


if __name__ == "__main__":
    main()
