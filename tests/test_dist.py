"""Data parallel for real: two processes on the CPU (gloo) under `accelerate launch`, the tiny preset.

`accelerate launch --cpu --num_processes 2` silently starts ONE process (SPEC §6), so the test first
proves that two ranks ran (two pids, ranks 0 and 1, world size 2), then that they trained on
different episodes and still ended with identical adapters, and that each agent's baseline used
the moments of the concatenated global batch."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

import dist
import rl
from config import UserError
from tests.conftest import ROOT

STEPS = 2  # then one more after a resume


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    run = out / "run"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(free_port()),
               str(ROOT / "tests" / "dist_worker.py"), str(out), str(STEPS),
               "--task", "math", "--preset", "tiny", "--device", "cpu", "--problems-per-step", "1",
               "--samples-per-problem", "2", "--max-new-tokens", "12", "--save-every", "1", "--log-samples", "1",
               "--seed", "3", "--out-dir", str(run)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # gloo on the CPU, even on a GPU machine
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-1500:] + proc.stderr[-3000:]
    ranks = [torch.load(out / f"rank_{r}.pt", weights_only=False) for r in (0, 1)]
    return run, ranks, proc


def test_two_ranks_really_ran(two_ranks):
    _, ranks, _ = two_ranks
    assert [r["rank"] for r in ranks] == [0, 1] and [r["launcher_rank"] for r in ranks] == ["0", "1"]
    assert all(r["world_size"] == 2 for r in ranks)
    assert ranks[0]["pid"] != ranks[1]["pid"]


def test_adapters_stay_identical_on_both_ranks_although_the_episodes_differ(two_ranks):
    _, (r0, r1), _ = two_ranks
    assert r0["adapters"].keys() == r1["adapters"].keys()
    for name, p in r0["adapters"].items():
        assert torch.equal(p, r1["adapters"][name]), name
    for agent in ("solver", "executor", "verifier"):  # lora_B starts at zero: every adapter was trained
        assert any(p.abs().sum() > 0 for n, p in r0["adapters"].items() if f"lora_B.{agent}." in n), agent
    assert len(r0["calls"]) == len(r1["calls"]) > 0
    assert any(a["returns"].shape != b["returns"].shape or not torch.equal(a["returns"], b["returns"])
               for a, b in zip(r0["calls"], r1["calls"])), "both ranks trained on the same episodes"


def test_the_baseline_uses_the_moments_of_the_global_batch(two_ranks):
    _, (r0, r1), _ = two_ranks
    local_differs = False
    for a, b in zip(r0["calls"], r1["calls"]):
        T = max(a["mask"].shape[1], b["mask"].shape[1])
        pad = lambda x: torch.nn.functional.pad(x, (0, T - x.shape[1]))  # noqa: E731
        returns, mask = torch.cat([pad(a["returns"]), pad(b["returns"])]), torch.cat([pad(a["mask"]), pad(b["mask"])])
        assert torch.equal(a["moments"], b["moments"])
        assert torch.allclose(a["moments"], rl.masked_moments(returns, mask), rtol=1e-10, atol=1e-10)
        whole = rl.normalize_advantages(returns, mask)  # one process over the concatenated batch
        mine = torch.cat([pad(rl.normalize_advantages(c["returns"], c["mask"], c["moments"])) for c in (a, b)])
        assert torch.allclose(mine, whole, atol=1e-5)
        local_differs |= not torch.allclose(rl.masked_moments(a["returns"], a["mask"]), a["moments"])
    assert local_differs, "the moments were never reduced over ranks"


def test_only_the_main_process_writes_and_logs_the_global_batch(two_ranks):
    run, _, proc = two_ranks
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, STEPS + 2))  # once each, across the resume
    assert all(m["episode/count"] == 2 * 1 * 2 for m in lines)  # 2 ranks x 1 problem x 2 samples
    assert (run / "samples.jsonl").read_text().count("\n") == STEPS + 1
    assert proc.stdout.count(f"step {STEPS + 1}  accuracy") == 1 and proc.stdout.count("resumed") == 1
    state = torch.load(run / "checkpoints" / f"step_{STEPS + 1:06d}" / "state.pt", weights_only=False)
    assert state["world_size"] == 2 and len(state["rank_rng"]) == 2
    assert not torch.equal(state["rank_rng"][0]["torch"], state["rank_rng"][1]["torch"])


def test_merged_update_stats_equal_one_process_on_the_global_batch(monkeypatch):
    """KL and clip fraction are token means: ranks are weighted by tokens, not by actions (issue 17:
    0.0392 merged by actions vs 0.0433 for one process on the same data)."""
    kl_a, kl_b = [0.01] * 10 + [0.02] * 10, [0.1] * 2  # rank 0: 2 actions of 10 tokens; rank 1: 1 of 2
    stats = [{"trained": 2, "tokens": 20, "loss": 0.3, "kl": sum(kl_a) / 20, "clip_frac": 0.1, "grad_norm": 1.0,
              "skipped": 0, "no_signal": 0.0, "lr": 1e-3},
             {"trained": 1, "tokens": 2, "loss": 0.1, "kl": sum(kl_b) / 2, "clip_frac": 0.5, "grad_norm": 1.0,
              "skipped": 0, "no_signal": 0.0, "lr": 1e-3}]
    monkeypatch.setattr(dist, "active", lambda: True)
    monkeypatch.setattr(dist, "gather", lambda obj: stats)
    merged = dist.merge_update_stats(stats[0])
    assert merged["kl"] == pytest.approx(sum(kl_a + kl_b) / 22)  # one process: the mean over all 22 tokens
    assert merged["clip_frac"] == pytest.approx((0.1 * 20 + 0.5 * 2) / 22)
    assert merged["trained"] == 3 and merged["tokens"] == 22 and merged["loss"] == pytest.approx(0.4)


def test_resume_needs_the_same_number_of_processes():
    with pytest.raises(UserError, match="saved by 2 process"):
        dist.resume_rank({"world_size": 2}, lambda state: None)
    dist.resume_rank({}, lambda state: pytest.fail("alone, checkpoint.load restores the RNG"))
