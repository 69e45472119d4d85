"""A run folder is data, not instructions (issue 15): a downloaded or shared run cannot run code
on --resume, send a secret anywhere from `eval.py RUN`, or pick the endpoint of a resumed run."""
import dataclasses
import json
import pickle

import pytest
import torch

import checkpoint
import config
import train
from config import PRESETS, Config, UserError, save_config


class Payload:
    """Unpickling this calls open(marker, 'w'): a stand-in for any code a pickle can run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def planted_run(tmp_path, **overrides):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_000001").mkdir(parents=True)
    save_config(Config(**{**PRESETS["tiny"], "out_dir": str(run), **overrides}), run / "config.json")
    return run


def test_a_planted_pickle_is_refused_on_resume_and_never_runs(tmp_path, capsys):
    run, marker = planted_run(tmp_path), tmp_path / "pwned"
    with open(run / "checkpoints" / "step_000001" / "state.pt", "wb") as f:
        pickle.dump({"step": 1, "rng": Payload(marker)}, f, protocol=2)
    with pytest.raises(SystemExit) as e:
        train.main(["--resume", str(run)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and not marker.exists()
    assert err.count("\n") == 1 and "state.pt holds more than tensors and plain values, refused" in err


def test_a_saved_state_is_tensors_and_plain_values(tmp_path):
    """What save() writes reads back through the weights-only loader, RNG streams included."""
    import random

    import numpy as np
    ckpt = tmp_path / "step"
    ckpt.mkdir()
    torch.save({"step": 3, "rng": checkpoint.rng_state()}, ckpt / "state.pt")
    want = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    random.random(), np.random.rand(), torch.rand(1)  # move every stream on
    checkpoint.set_rng_state(checkpoint.read_state(ckpt)["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == want
