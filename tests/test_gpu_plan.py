"""The 24 GB memory plan (bench/plan.py, docs/gpu.md) and bench row 7, a step at train.py's
defaults with memory per phase (bench/defaults.py), smoke-run on the CPU with a tiny shape; the
prepared GPU check's composition (issue 29)."""
from types import SimpleNamespace

import pytest
import torch

from bench import defaults, plan
from bench.__main__ import parse
from bench.sizes import REALISTIC
from config import Config
from tests.conftest import ROOT

TOY = defaults.TOY  # hidden 64, intermediate 128, 2 layers, 4 heads (head 16), 2 KV heads, vocab 512, tied


def test_the_estimate_of_one_small_case_by_hand():
    assert plan.kv_per_token(TOY) == 2 * 2 * 2 * 16 * 2  # K and V x layers x KV heads x head dim x bf16
    # LoRA r=4: sum of (in + out) over q,k,v,o,gate,up,down = 1024 per layer, 2 layers, fp32; 3 adapters
    # x (weights + 2 Adam moments) + 1 gradient
    assert plan.lora_bytes(TOY, r=4) == 4 * 1024 * 2 * 4 * 10
    prefill, decode = plan.generate_peaks(TOY, prompt=10, new=5, rows=2, lora=True)
    assert prefill == 20 * 256 + 20 * (5 * 128 + 6 * 64) * 2 + 2 * 10 * 10  # KV + one layer + mask
    assert decode == 2 * 15 * 256 * 1.5 + 2 * 512 * 4 * 3 + 2 * 15  # KV (+ one layer's cat copy) + logits + mask


def test_the_settings_are_train_pys_defaults_and_the_budget_bounds_rows_times_length():
    s = plan.Settings.of(Config())
    assert (s.gen_batch_size, s.max_new_tokens, s.coach_batch_size, s.micro_batch_size, s.episodes) == (32, 1024, 16, 4, 32)
    assert plan.rows_for(3000, s, 32) == 10  # the default budget, 32768 tokens: 10 rows of 3,000
    assert plan.rows_for(300, s, 32) == 32  # short prompts: gen_batch_size rows
    budget = plan.Settings(prefill_tokens=16384)
    assert plan.rows_for(3000, budget, 32) == 5 and plan.rows_for(300, budget, 32) == 32
    assert plan.rows_for(20000, budget, 32) == 1  # a prompt over the budget still runs, alone


def test_the_plan_says_what_issue_29_asks():
    """The defaults fit the 1.5B on 24 GB with margin, and the 7B thanks to the default token budget:
    without it (the count-based batches of before) the 7B's prefill does not fit."""
    default = plan.Settings.of(Config())
    assert max(plan.card_peaks(REALISTIC["1.5b"], default).values()) < 0.8 * plan.CARD_GIB
    assert max(plan.card_peaks(REALISTIC["7b"], default).values()) <= plan.CARD_GIB
    unbounded = plan.Settings(**{**vars(default), "prefill_tokens": 1 << 30})
    assert max(plan.card_peaks(REALISTIC["7b"], unbounded).values()) > plan.CARD_GIB
    fit = plan.fitting_settings(REALISTIC["7b"], plan.CARD_GIB, unbounded)
    assert fit.prefill_tokens and max(plan.card_peaks(REALISTIC["7b"], fit).values()) <= plan.CARD_GIB


def test_docs_gpu_md_holds_the_computed_table():
    assert plan.table() in (ROOT / "docs" / "gpu.md").read_text()


SMALL = plan.Settings(gen_batch_size=4, max_new_tokens=6, coach_batch_size=3, coach_max_new_tokens=4,
                      micro_batch_size=2, episodes=4)
LENGTHS = {"solver": 12, "executor1": 20, "executor2": 30, "verifier": 25, "coach": 40}



@pytest.mark.parametrize("scope", ["peak", "full"])
def test_row_7_runs_two_steps_and_reports_memory_per_phase(scope, one_thread):
    x = defaults.measure_defaults("toy", "cpu", SMALL, scope=scope, steps=2, four_bit=True, lengths=LENGTHS)
    assert len(x["steps"]) == 2 and "oom" not in x
    assert all(set(st) == {"rollout_s", "coach_s", "update_s", "step_s"} for st in x["steps"])
    assert set(x["mb"]) == set(defaults.PHASES)
    assert all(v["reserved"] >= v["alloc"] > 0 for v in x["mb"].values())
    assert ("derived_step_s" in x) == (scope == "peak")
    what, ours, _, ratio = defaults.report_row(x)
    assert what.startswith("7 defaults toy") and "prefill" in ours and "s/step" in ours and ratio is None


def test_row_7_trains_the_adapter_it_updates(one_thread):
    ctx = defaults.make_ctx("toy", "cpu", SMALL, four_bit=False, lengths=LENGTHS)
    before = [p.detach().clone() for n, p in ctx.model.named_parameters() if ".executor." in n and "lora_B" in n]
    defaults.update_phase(ctx, "peak")
    after = [p for n, p in ctx.model.named_parameters() if ".executor." in n and "lora_B" in n]
    assert any(not torch.equal(a, b) for a, b in zip(before, after))


def test_the_gpu_check_runs_the_15b_at_the_defaults_and_the_7b_at_the_fitting_settings(monkeypatch):
    import bench.sizes
    seen = []
    monkeypatch.setattr(bench.sizes, "child", lambda args, spec: seen.append((spec, args.prefill_tokens,
                                                                                args.micro_batch_size, args.cap_gib)) or {})
    args = parse(["--gpu-check", "--device", "cpu"])
    assert args.only == {"defaults"}
    args.device = "cuda"  # child() is replaced: nothing touches a GPU
    defaults.gpu_check(args)
    fit = plan.fitting_settings(REALISTIC["7b"], plan.CARD_GIB, plan.Settings.of(Config()))
    assert seen == [("defaults:1.5b", 0, 0, 24.0), ("defaults:7b", fit.prefill_tokens, fit.micro_batch_size, 24.0)]


def test_without_cuda_the_real_sizes_are_not_measured():
    args = SimpleNamespace(defaults_sizes=["1.5b", "7b"], device="cpu")
    assert defaults.rows(args) == [{"size": s, "error": "not measured (no GPU)"} for s in ("1.5b", "7b")]


@pytest.mark.parametrize("argv", [["--defaults-sizes", "13b"], ["--steps", "0"], ["--cap-gib", "-1"]])
def test_bad_row_7_flags_fail_with_one_line_and_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_the_trl_peer_computes_in_the_dtype_of_the_mappa_base():
    from bench.trl_peer import peer_precision
    assert peer_precision(SimpleNamespace(dtype=torch.bfloat16)) == {"bf16": True, "fp16": False}
    assert peer_precision(SimpleNamespace(dtype=torch.float16)) == {"bf16": False, "fp16": True}
    assert peer_precision(SimpleNamespace(dtype=torch.float32)) == {"bf16": False, "fp16": False}
