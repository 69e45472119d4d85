"""`python -m bench`: the benchmark's command line; bench/__init__.py says what it measures."""
import argparse
import json
import os
import sys
import time

import torch

import dist
from bench import measure, report, rows, sizes
from bench.sizes import GPU_SIZES


class UsageError(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (house style)
        print(f"error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)


def parse(argv=None) -> argparse.Namespace:
    p = UsageError(description="Benchmark MAPPA (rollout, coach, step vs TRL GRPO, memory, sizes, sandbox).")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--model", default="tiny", help="model of rows 1-3 (rollout, coach, step): tiny, tiny-50m, a Hub "
                   "name or a local model folder, e.g. a pretrained laptop-team model")
    p.add_argument("--sizes", default="", help="row 5, comma-separated: tiny, tiny-50m, 1.5b, 7b "
                   "(default: all; --quick: tiny)")
    p.add_argument("--reps", type=int, default=0, help="repetitions after the warm-up (default 5; --quick 2)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 reps, tiny only, small sandbox row")
    p.add_argument("--batch", type=int, default=8, help="episodes per rollout batch")
    p.add_argument("--max-new-tokens", type=int, default=48, help="cap on each action's length (tiny preset)")
    p.add_argument("--coach-tokens", type=int, default=128, help="row 2: rationale length of the forced generate coach")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--prompt-tokens", type=int, default=0, help="row 5 prompt length (default: 128 CPU, 512 GPU)")
    p.add_argument("--new-tokens", type=int, default=0, help="row 5 generated length (default: 64 CPU, 512 GPU)")
    p.add_argument("--4bit", dest="four_bit", action=argparse.BooleanOptionalAction, default=None,
                   help="4-bit NF4 base (default: on with CUDA)")
    p.add_argument("--only", default="", help="rows to run, comma-separated: rollout,coach,step,memory,sizes,sandbox,defaults; "
                   "laptop (only when named: one laptop-shape step of a real --model, bench/laptop.py)")
    p.add_argument("--defaults-sizes", default="1.5b,7b", help="row 7 (a step at train.py's defaults): 1.5b, 7b "
                   "(CUDA), toy (a tiny shape, CPU)")
    p.add_argument("--scope", default="peak", choices=["peak", "full"], help="row 7: each phase's largest chunk "
                   "(peak) or a whole default step (full)")
    p.add_argument("--steps", type=int, default=2, help="row 7: steps per size")
    p.add_argument("--cap-gib", type=float, default=0.0, help="row 7: cap torch's allocator at this many GiB (24: "
                   "a consumer card); 0: the whole card")
    p.add_argument("--prefill-tokens", type=int, default=0, help="row 7: train.py's --prefill-tokens (0: its default)")
    p.add_argument("--micro-batch-size", type=int, default=0, help="row 7: train.py's --micro-batch-size (0: its default)")
    p.add_argument("--gpu-check", action="store_true", help="the prepared device check (bench/gpu_check.sh): row 7 "
                   "for the 1.5B at the defaults and the 7B at the settings that fit, capped at 24 GiB")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"], help="row 8 (laptop): compute dtype")
    p.add_argument("--no-trl", action="store_true", help="row 8 (laptop): skip the TRL peer")
    p.add_argument("--trl-only", action="store_true", help="row 8 (laptop): the TRL peer alone (run it beside a --no-trl run)")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="what rows 1-3 time: wall, or this process's CPU time (steadier on shared cores; use with --threads 1)")
    p.add_argument("--json", default="", help="also write every number to this file")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device} but CUDA is not available")
    if args.four_bit is None:
        args.four_bit = args.device.startswith("cuda")
    args.reps = args.reps or (2 if args.quick else 5)
    from models import tiny
    known = set(tiny.SIZES) | set(GPU_SIZES)
    args.sizes = [s for s in (args.sizes or ("tiny" if args.quick else ",".join([*tiny.SIZES, *GPU_SIZES]))).split(",") if s]
    names = {"rollout", "coach", "step", "memory", "sizes", "sandbox", "defaults"}
    args.only = {"defaults"} if args.gpu_check else set(args.only.split(",")) if args.only else names
    args.defaults_sizes = [s for s in args.defaults_sizes.split(",") if s]
    for bad, what in ((set(args.sizes) - known, "--sizes"), (args.only - names - {"laptop"}, "--only"),
                      (set(args.defaults_sizes) - {*GPU_SIZES, "toy"}, "--defaults-sizes")):
        if bad:
            p.error(f"{what}: unknown {', '.join(sorted(bad))}")
    if min(args.reps, args.batch, args.max_new_tokens, args.steps) < 1 or args.threads < 0:
        p.error("--reps, --batch, --max-new-tokens and --steps must be >= 1, --threads >= 0")
    if min(args.cap_gib, args.prefill_tokens, args.micro_batch_size) < 0:
        p.error("--cap-gib, --prefill-tokens and --micro-batch-size must be >= 0")
    return args


def main(argv=None) -> None:
    import tempfile
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    measure.set_clock(args.clock)
    dist.use_device(args.device)  # cuda:N: the default device of every torch.cuda call and cache (issue 29)
    if args.child:
        from bench import defaults
        row7 = args.child.startswith("defaults:")  # row 7's child (bench/defaults.py), else rows 4-5's
        out = defaults.run_child(args, args.child.partition(":")[2]) if row7 else sizes.run_child(args)
        print("BENCH_CHILD " + json.dumps(out), flush=True)
        return
    results, params, t0 = {}, None, time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mappa-bench-") as tmp:
        args.tmp = tmp
        if args.only & {"rollout", "coach", "step"}:
            from agents import ModelLoadError
            try:
                ctx = rows.make_ctx(args)
            except ModelLoadError as e:
                print(f"error: {e}", file=sys.stderr)
                sys.exit(2)
            params = ctx.base_params
            for name, fn in (("rollout", rows.bench_rollout), ("coach", rows.bench_coach), ("step", rows.bench_steps)):
                if name in args.only:
                    print(f"[bench] {name} ({args.model}, {args.reps} reps) ...", file=sys.stderr, flush=True)
                    t_row = time.perf_counter()
                    results[name] = fn(ctx, args)
                    ratio = results[name].get("ratio")
                    print(f"[bench] {name} done in {time.perf_counter() - t_row:.0f} s"
                          + (f", ratio {ratio:.2f}x" if ratio else ""), file=sys.stderr, flush=True)
            if "coach" in results and "step" in results:
                results["step"]["generate_share"] = rows.step_share(results["step"], results["coach"])
            del ctx
        if "memory" in args.only:
            print("[bench] memory ...", file=sys.stderr, flush=True)
            results["memory"] = {k: sizes.child(args, f"memory:{k}") for k in ("1", "3", "3:nocoach")}
        if "sizes" in args.only:
            print("[bench] sizes ...", file=sys.stderr, flush=True)
            results["sizes"] = sizes.size_rows(args)
        if "defaults" in args.only:
            from bench import defaults
            print("[bench] defaults ...", file=sys.stderr, flush=True)
            results["defaults"] = defaults.gpu_check(args) if args.gpu_check else defaults.rows(args)
        if "sandbox" in args.only:
            print("[bench] sandbox ...", file=sys.stderr, flush=True)
            results["sandbox"] = rows.bench_sandbox_row(args)
        if "laptop" in args.only:
            from bench import laptop
            print(f"[bench] laptop ({args.model}) ...", file=sys.stderr, flush=True)
            results["laptop"] = laptop.run(args)
    table = report.table(results, args)
    print(report.header(args, params))
    print(report.markdown(table))
    for row in table:
        if row[4]:
            print(f"target {row[0][2:]}: {row[3]} (want {row[4]}) -> {row[5]}")
    if "laptop" in results:
        from bench import laptop
        print(laptop.markdown(results["laptop"]))
    print(f"total {time.perf_counter() - t0:.0f} s, load avg at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v if not isinstance(v, set) else sorted(v) for k, v in vars(args).items()},
                       "results": results, "table": table}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
