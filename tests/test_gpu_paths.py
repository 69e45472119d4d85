"""The CUDA paths that no CPU run takes, checked on the CPU with torch.cuda's functions replaced
(issue 29): checkpoints load onto the CPU (map_location), the CUDA RNG resumes across another
number of visible GPUs, each rank of a launcher takes its own GPU, and the bench reads the device
it was given."""
import io

import pytest
import torch
import torch.serialization

import checkpoint
import dist
from bench import measure
from config import UserError


# ------------------------------------------------------------------ item 5: map_location
def save_as_if_on_gpu(obj, path) -> None:
    """torch.save, with every storage recorded as cuda:0 (what a GPU run writes for its optimiser state)."""
    real = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"
    try:
        torch.save(obj, path)
    finally:
        torch.serialization.location_tag = real


def test_a_checkpoint_saved_on_gpu_0_loads_onto_the_cpu(tmp_path):
    ckpt = tmp_path / "step_000002"
    ckpt.mkdir()
    save_as_if_on_gpu({"step": 2, "optimizers": {"solver": {"state": {0: {"exp_avg": torch.ones(3)}}}}},
                      ckpt / "state.pt")
    with pytest.raises(RuntimeError, match="CUDA"):  # what every rank did before: stage it on GPU 0
        torch.load(ckpt / "state.pt", weights_only=True)
    state = checkpoint.read_state(ckpt)
    assert state["optimizers"]["solver"]["state"][0]["exp_avg"].device.type == "cpu"
    # finished_message reads the state the same way (it decides whether a resume has work left)
    assert "is finished" in checkpoint.finished_message(tmp_path, ckpt, steps=2)


# ------------------------------------------------------------------ item 6: the CUDA RNG
@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda as a process on cuda:`here` of `count` visible devices sees it; set_rng_state recorded."""
    gpu = {"here": 0, "count": 1, "set": []}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: gpu["here"])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpu["count"])
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.full((4,), 10 + device, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: gpu["set"].append((state.tolist(), device)))
    return gpu


def roundtrip(state: dict, tmp_path) -> dict:
    """A checkpoint's RNG state as a resume reads it back (weights_only, map_location cpu)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True, map_location="cpu")


def test_the_checkpoint_holds_this_devices_generator_and_the_device_count(fake_cuda, tmp_path):
    fake_cuda.update(here=1, count=2)
    state = roundtrip(checkpoint.rng_state(), tmp_path)
    assert state["cuda"].tolist() == [11] * 4 and state["cuda_devices"] == 2
    checkpoint.set_rng_state(state)
    assert fake_cuda["set"] == [([11] * 4, 1)]


def test_fewer_visible_gpus_than_at_the_save_is_a_note_not_a_refusal(fake_cuda, capsys, tmp_path):
    fake_cuda.update(here=0, count=4)
    state = roundtrip(checkpoint.rng_state(), tmp_path)
    fake_cuda.update(count=1)
    checkpoint.set_rng_state(state)
    assert fake_cuda["set"] == [([10] * 4, 0)]
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "saved seeing 4 CUDA device(s), this process sees 1" in err[0]


@pytest.mark.parametrize("saved,here,count,restored", [
    (3, 0, 1, [20] * 4),  # an old checkpoint of 3 GPUs, resumed on 1: the IndexError of issue 29
    (3, 1, 2, [21] * 4),  # fewer devices, this one still in the list
    (1, 1, 2, None),      # more devices than at the save: cuda:1 has no saved state, it keeps the seed's
    (2, 1, 2, [21] * 4),  # the same count: restored silently
])
def test_an_old_checkpoints_list_of_every_devices_state_still_loads(fake_cuda, capsys, tmp_path, saved, here, count,
                                                                     restored):
    state = roundtrip({**checkpoint.rng_state(), "cuda": [torch.full((4,), 20 + i, dtype=torch.uint8)
                                                          for i in range(saved)]}, tmp_path)
    del state["cuda_devices"]  # the old form had the list only
    fake_cuda.update(here=here, count=count)
    checkpoint.set_rng_state(state)
    assert fake_cuda["set"] == ([] if restored is None else [(restored, here)])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == (saved != count)


def test_a_cpu_resume_of_a_gpu_checkpoint_ignores_the_cuda_state(tmp_path):
    state = {**checkpoint.rng_state(), "cuda": torch.zeros(4, dtype=torch.uint8), "cuda_devices": 8}
    checkpoint.set_rng_state(state)  # torch.cuda.is_available() is False here: nothing to restore, no error


# ------------------------------------------------------------------ item 7: which GPU
@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_each_rank_of_a_launcher_takes_cuda_local_rank(device):
    assert dist.rank_device(device, {"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, gpus=2) == "cuda:1"


def test_a_fixed_cuda_n_under_a_launcher_is_one_line_naming_the_fix():
    with pytest.raises(UserError) as e:
        dist.rank_device("cuda:0", {"WORLD_SIZE": "2", "LOCAL_RANK": "1"}, gpus=2)
    assert "CUDA_VISIBLE_DEVICES" in str(e.value) and "\n" not in str(e.value)


def test_more_ranks_than_gpus_is_one_line():
    with pytest.raises(UserError, match="LOCAL_RANK=2 has no GPU: 2 visible"):
        dist.rank_device("cuda", {"WORLD_SIZE": "3", "LOCAL_RANK": "2"}, gpus=2)


@pytest.fixture
def gpus(monkeypatch):
    """Two fake GPUs; set_device and the process group recorded, never started."""
    calls = {"set_device": [], "group": []}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls["set_device"].append(str(d)))
    monkeypatch.setattr(dist.td, "is_initialized", lambda: False)
    monkeypatch.setattr(dist.td, "init_process_group", lambda backend, **k: calls["group"].append(backend))
    monkeypatch.setattr(dist.atexit, "register", lambda fn: None)
    for var in ("WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    return calls


def test_init_under_a_launcher_sets_this_ranks_gpu_and_joins_nccl(gpus, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist.init("cuda") == "cuda:1"
    assert gpus == {"set_device": ["cuda:1"], "group": ["nccl"]}


def test_init_alone_with_cuda_n_makes_it_the_current_device(gpus):
    assert dist.init("cuda:1") == "cuda:1"
    assert gpus == {"set_device": ["cuda:1"], "group": []}


def test_eval_and_the_bench_make_their_cuda_n_current_too(gpus):
    assert dist.use_device("cuda:1") == "cuda:1" and dist.use_device("cuda") == "cuda"
    assert gpus["set_device"] == ["cuda:1"]


@pytest.mark.parametrize("device", ["auto", "cuda", "cpu"])
def test_init_alone_otherwise_changes_nothing(gpus, device):
    assert dist.init(device) == device
    assert gpus == {"set_device": [], "group": []}


def test_the_bench_reads_and_syncs_the_device_it_was_given(monkeypatch):
    seen = []
    for name in ("max_memory_allocated", "synchronize", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda device=None, name=name: seen.append((name, str(device))) or 0)
    measure.reset_peak("cuda:1")
    measure.peak_memory_mb("cuda:1")
    measure.repeat({"x": lambda: {}}, reps=1, warmup=0, device="cuda:1")
    assert seen == [("synchronize", "cuda:1"), ("reset_peak_memory_stats", "cuda:1"),
                    ("max_memory_allocated", "cuda:1"), ("synchronize", "cuda:1")]
