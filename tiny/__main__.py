"""`python -m tiny pretrain [--steps N] [--out DIR] [--start-from DIR]`: build the laptop model (tiny/pretrain.py)."""
import argparse
import sys
from pathlib import Path

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tiny", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("pretrain", help="build the laptop model (the shipped tiny/laptop/ by default)")
    b.add_argument("--steps", type=int, default=None, help="optimiser steps of one phase (default: the recipe's phases)")
    b.add_argument("--start-from", default=None, help="a folder saved after phase 1: continue the build there")
    b.add_argument("--out", default=None, help="output folder (default: tiny/laptop)")
    b.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on shared cores)")
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        p.error("--steps must be >= 1")
    from tiny import LAPTOP_DIR
    from tiny.pretrain import pretrain
    torch.set_num_threads(args.threads)
    stats = pretrain(Path(args.out) if args.out else LAPTOP_DIR, phases=(args.steps,) if args.steps else None,
                     start_from=Path(args.start_from) if args.start_from else None,
                     log=lambda s: print(s, file=sys.stderr, flush=True))
    print(f"built {args.out or LAPTOP_DIR}: {stats['parameters'] / 1e6:.2f}M parameters, "
          f"{stats['tokens_seen'] / 1e6:.2f}M tokens, {stats['minutes']} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
