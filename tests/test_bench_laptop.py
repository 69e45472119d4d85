"""Row 7 of the benchmark (bench/laptop.py): the machine's own rates, the parameter split, the table."""
import pytest

from bench import laptop


def test_machine_rates_are_measured_here():
    r = laptop.machine_rates(n=256, reps=2)
    assert r["bf16_gflops"] > 0 and r["fp32_gflops"] > 0 and r["bandwidth_gbs"] > 0


def test_body_and_head_parameters_leave_out_embeddings_and_lora(policy):
    _, model = policy
    body, head = laptop.body_params(model)
    embed = sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" in n)
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert head > 0 and body + head + embed + lora == sum(p.numel() for p in model.parameters())


def test_the_table_gives_every_part_its_share_and_fraction():
    parts = {"prefill": 10.0, "decode": 50.0, "sandbox": 2.0, "rollout_other": 1.0, "coach": 7.0,
             "grade_other": 0.0, "update": 30.0}
    r = {"episodes": 16, "actions": 52, "generated_tokens": 4000, "dtype": "bf16", "threads": 2,
         "rates": {"bf16_gflops": 400.0, "fp32_gflops": 160.0, "bandwidth_gbs": 10.0}, "parts": parts,
         "step_s": 100.0, "s_per_episode": 6.25, "s_per_1k": 25.0, "correct": 5, "prefill_frac": 0.5,
         "prefill_tokens": 9000, "decode_vs_read": 1.4, "decode_steps": 600, "decode_step_s": 0.083,
         "weight_read_s": 0.06, "coach_frac": 0.4, "coach_tokens": 20000, "update_frac": 0.55,
         "update_tokens": 30000, "trl": {"step_s": 50.0, "tokens": 2000, "s_per_1k": 25.0}, "trl_ratio": 1.0}
    text = laptop.markdown(r)
    for k in parts:
        assert f"| {k} |" in text
    assert "6.2 s/episode" in text and "50% of the matmul rate" in text and "1.40x one weight read" in text
    assert "TRL / MAPPA = 1.00x" in text


@pytest.mark.parametrize("argv", [["--only", "laptop,nope"], ["--dtype", "fp8"]])
def test_bad_laptop_flags_fail_with_one_line(argv, capsys):
    from bench.__main__ import parse
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
