"""The table `python -m bench` prints: rows, targets with PASS/FAIL, and the header saying where it ran."""
import os
from datetime import datetime

import torch

TARGETS = {  # row -> (the ratio's meaning, threshold, True if the ratio must be >= threshold)
    "rollout": ("batched / per-episode tokens/s", 3.0, True),  # issue 20's CPU targets
    "coach": ("generate / logit s per action", 5.0, True),
    "step": ("TRL / MAPPA s per 1k tokens", 1.0, True),
    "memory": ("3 adapters + coach / 1 adapter peak", 1.05, False),
}


def fmt(s: dict | None, unit: str = "", digits: int = 3) -> str:
    """A spread() as "median [min-max]"."""
    if not s:
        return "not measured"
    g = lambda x: f"{x:.{digits}g}"  # noqa: E731
    return f"{g(s['median'])}{unit} [{g(s['min'])}-{g(s['max'])}]"


def verdict(key: str, ratio: float | None) -> tuple[str, str]:
    """(target text, PASS/FAIL/-) for a row's ratio."""
    _, bound, at_least = TARGETS[key]
    target = f"{'>=' if at_least else '<='} {bound:g}x"
    if ratio is None:
        return target, "not measured"
    return target, "PASS" if (ratio >= bound if at_least else ratio <= bound) else "FAIL"


def table(r: dict, args) -> list[list[str]]:
    """Rows [measure, MAPPA, alternative, ratio, target, result] from the results dict."""
    rows = []

    def add(key, measure, ours, theirs, ratio):
        target, result = verdict(key, ratio) if key else ("", "")
        rows.append([measure, ours, theirs, "-" if ratio is None else f"{ratio:.2f}x", target, result])

    if "rollout" in r:
        x = r["rollout"]
        add("rollout", f"1 rollout tokens/s, {args.batch} episodes x 3 agents",
            "batched: " + fmt(x["batched_tok_s"]), "one episode at a time: " + fmt(x["single_tok_s"]), x["ratio"])
    if "coach" in r:
        x = r["coach"]
        add("coach", f"2 coach s per action ({x['actions']} actions)", "logit: " + fmt(x["logit_s_action"]),
            f"generate, {x['coach_tokens']}-token rationale: {fmt(x['forced_s_action'])}", x["ratio"])
        add(None, "2 coach, generate as the random model writes it",
            f"{x['generate_tokens_per_action']:.1f} tok/action, {x['generate_scored']}/{x['actions']} parsed",
            "generate: " + fmt(x["generate_s_action"]), x["ratio_as_is"])
    if "step" in r:
        x = r["step"]
        gen = f"generate, {r['coach']['coach_tokens']}-token rationale: {x['generate_share']:.2f} (derived from " \
              "row 2)" if "generate_share" in x else ""
        add(None, "2 coach share of a MAPPA step", "logit: " + fmt(x["logit"]["coach_share"], digits=2), gen, None)
        parts = ", ".join(f"{k} {v:.2f}" for k, v in x["logit"]["parts"].items())
        ours = (f"MAPPA, logit coach: {fmt(x['logit']['s_per_1k'])} ({x['logit']['step_s']['median']:.2f} s/step: "
                f"{parts}; {x['logit']['tokens']} tok)")
        theirs = (f"TRL GRPO: {fmt(x['trl']['s_per_1k'])} ({x['trl']['step_s']['median']:.2f} s/step, "
                  f"{x['trl']['tokens']} tok)") if "trl" in x else x["trl_error"]
        add("step", "3 s per 1,000 generated tokens", ours, theirs, x.get("ratio"))
    if "memory" in r:
        one, three = r["memory"]["1"], r["memory"]["3"]
        unit = "MiB (CUDA max allocated; reserved in the line below)" if args.device.startswith("cuda") else "MiB (peak RSS)"
        if "error" in one or "error" in three:
            add("memory", f"4 peak memory, {unit}", three.get("error", ""), one.get("error", ""), None)
        else:
            add("memory", f"4 peak memory, {unit}",
                f"3 adapters + coach: {three['peak_mb']:.0f} (+{three['peak_mb'] - three['baseline_mb']:.0f} over imports)",
                f"1 adapter: {one['peak_mb']:.0f} (+{one['peak_mb'] - one['baseline_mb']:.0f} over imports)",
                three["peak_mb"] / one["peak_mb"])
            if args.device.startswith("cuda"):
                add(None, "4 peak memory, MiB (CUDA max reserved: what the card must have free)",
                    f"3 adapters + coach: {three['reserved_mb']:.0f}", f"1 adapter: {one['reserved_mb']:.0f}", None)
            bare = r["memory"].get("3:nocoach", {})
            if "peak_mb" in bare:
                add(None, "4 peak memory, 3 adapters without the coach pass",
                    f"{bare['peak_mb']:.0f} (+{bare['peak_mb'] - bare['baseline_mb']:.0f} over imports)",
                    "vs 1 adapter", bare["peak_mb"] / one["peak_mb"])
    for x in r.get("sizes", []):
        if "error" in x:
            add(None, f"5 size {x['size']}", x["error"], "", None)
            continue
        peak = f"peak {x['peak_mb']} MiB" + (f" ({x['reserved_mb']} reserved)" if "reserved_mb" in x else "")
        add(None, f"5 size {x['size']} ({x['params_m']}M params, {'4-bit' if x['4bit'] else 'full precision'}, "
            f"3 adapters)", f"generate {fmt(x['gen_tok_s'])} tok/s ({x['batch']}x{x['new_tokens']} new after "
            f"{x['prompt_tokens']}); update {fmt(x['update_s'])} s ({x['batch']} actions); {peak}",
            f"batch {x['batch']} vs 1: {x['batch_speedup']:.2f}x; coach {x['coach_tokens']}-token rationale vs "
            f"logit pass: {x['coach_ratio']:.2f}x", None)
    for x in r.get("defaults", []):
        from bench.defaults import report_row
        add(None, *report_row(x)) if "error" not in x else add(None, f"7 defaults {x['size']}", x["error"], "", None)
    if "sandbox" in r:
        x = r["sandbox"]
        if "error" in x:
            add(None, "6 sandbox", x["error"], "", None)
        else:
            add(None, f"6 sandbox: {x['n']} code actions, {x['n_timeouts']} time out ({x['timeout_s']} s)",
                f"parallel ({x['workers']} workers): {x['parallel_s']} s", f"sequential: {x['sequential_s']} s",
                x["speedup"])
    return rows


def markdown(rows: list[list[str]]) -> str:
    head = ["measure", "MAPPA (this project)", "alternative", "ratio", "target", "result"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def header(args, ctx_params: int | None) -> str:
    import peft
    import transformers
    try:
        import trl
        trl_v = trl.__version__
    except ImportError:
        trl_v = "not installed"
    if args.device.startswith("cuda"):
        where = torch.cuda.get_device_name(args.device)
    else:
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
        where = f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    size = f"{ctx_params / 1e6:.2f}M params" if ctx_params else "?"
    return (f"python -m bench {datetime.now():%Y-%m-%d %H:%M}  device {args.device} ({where})  load avg "
            f"{os.getloadavg()[0]:.1f}\nmodel {args.model} ({size}, {'4-bit' if args.four_bit else 'full precision'}), "
            f"batch {args.batch} episodes, <= {args.max_new_tokens} new tokens per action, median [min-max] of "
            f"{args.reps} reps after 1 warm-up, clock {getattr(args, 'clock', 'wall')}\ntorch {torch.__version__}, transformers {transformers.__version__}, "
            f"peft {peft.__version__}, trl {trl_v}")


