"""Shared fixtures: a tiny random model built once per test session, offline, in a temp cache."""
import os
import sys
from pathlib import Path

# One OpenMP thread per process, set before torch loads: several tests run training processes side
# by side, and torch's spinning worker threads on an oversubscribed CPU made tiny runs ~8x slower
# (measured on 2 cores). Subprocesses inherit it.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session", autouse=True)
def tiny_cache(tmp_path_factory):
    """Every test (and every subprocess it starts) builds/loads tiny models in one fresh folder."""
    os.environ["MAPPA_CACHE"] = str(tmp_path_factory.mktemp("mappa-cache"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    from models import tiny
    tiny.ensure_tiny_model("tiny")
    return Path(os.environ["MAPPA_CACHE"])


def make_policy(dtype: str | None = None):
    """A tiny model (fp32 unless `dtype`) with one LoRA adapter per math agent, adapters made
    non-zero so that adapter-on and adapter-off differ."""
    import torch

    from agents import MATH, add_adapters, load_base
    tokenizer, base = load_base("tiny", load_in_4bit=False, device="cpu", dtype=dtype)
    model = add_adapters(base, MATH, r=4, alpha=8)
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    return tokenizer, model


@pytest.fixture
def policy():
    """A fresh fp32 make_policy()."""
    return make_policy()


@pytest.fixture
def one_thread():
    """Two torch threads on two cores shared with other jobs run a test ~10x slower (measured)."""
    import torch
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
