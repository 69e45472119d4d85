"""One run folder, one writer, nothing lost (issue 16): the lock, a start that failed, a folder we
may not write, a full disk during a save, a damaged newest checkpoint, and Ctrl-C."""
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from peft import PeftModel

import checkpoint
import eval as evaluation
import train
from config import UserError
from tests.test_bad_input import run_main

ONE = ["--preset", "tiny", "--problems-per-step", "1", "--samples-per-problem", "1", "--max-new-tokens", "8",
       "--log-samples", "0"]


def steps(run_dir):
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def write_lock(run_dir, pid, host=None):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "lock").write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "then"}))


def test_a_second_writer_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live first writer
    try:
        write_lock(tmp_path / "run", sleeper.pid)
        monkeypatch.setattr(train, "load_base", lambda *a, **k: pytest.fail("loaded the model"))
        err = run_main(train.main, ONE + ["--steps", "1", "--out-dir", str(tmp_path / "run")], capsys)
        assert f"in use by process {sleeper.pid}" in err and "another --out-dir" in err
        err = run_main(train.main, ["--resume", str(tmp_path / "run")], capsys)  # no checkpoint: refused anyway
        assert sorted(os.listdir(tmp_path / "run")) == ["lock"]
        assert json.loads((tmp_path / "run" / "lock").read_text())["pid"] == sleeper.pid  # still theirs
    finally:
        sleeper.kill()
        sleeper.wait()


def test_two_locks_in_one_process_and_another_host():
    @checkpoint.one_writer
    def take_twice(run_dir):
        checkpoint.lock_run_dir(run_dir)
        assert json.loads((run_dir / "lock").read_text())["pid"] == os.getpid()
        with pytest.raises(UserError, match=f"in use by process {os.getpid()}"):
            checkpoint.lock_run_dir(run_dir)

    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = checkpoint.Path(tmp) / "new" / "run"
        take_twice(run_dir)
        assert not run_dir.exists()  # released, and the folder it made (left empty) removed
        write_lock(run_dir, 1, host="elsewhere")  # can't tell if a pid on another host lives: refused
        with pytest.raises(UserError, match="process 1 on host elsewhere"):
            checkpoint.lock_run_dir(run_dir)


def test_a_stale_lock_from_a_dead_process_is_taken_over_with_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    pid = dead_pid()
    write_lock(run_dir, pid)

    @checkpoint.one_writer
    def writer():
        checkpoint.lock_run_dir(run_dir)
        return json.loads((run_dir / "lock").read_text())

    assert writer()["pid"] == os.getpid()
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"note: taking over {run_dir / 'lock'}: process {pid} that left it is gone"]
    assert not (run_dir / "lock").exists()  # released at the end
    (run_dir / "lock").write_text("")  # a writer killed between creating and filling it, long ago
    old = time.time() - 3600
    os.utime(run_dir / "lock", (old, old))
    assert writer()["pid"] == os.getpid()
    (run_dir / "lock").write_text("")  # ... or just now: it may be a live writer, refused
    with pytest.raises(UserError, match="being taken by another process"):
        writer()


def test_a_failed_start_does_not_block_the_corrected_command(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    args = ONE + ["--steps", "1", "--out-dir", str(run_dir)]

    def no_coach(*a, **k):  # a failure after the model loaded and config.json was written
        raise UserError("the coach cannot be built")

    monkeypatch.setattr(train, "make_coach", no_coach)
    assert "the coach cannot be built" in run_main(train.main, args, capsys)
    assert sorted(os.listdir(run_dir)) == ["config.json"]  # lock released
    err = run_main(train.main, ["--resume", str(run_dir)], capsys)
    assert "start failed before the first step" in err and f"--out-dir {run_dir}" in err
    monkeypatch.undo()
    train.main(args)  # the corrected command reuses the folder
    assert steps(run_dir) == [1] and not (run_dir / "lock").exists()


def read_only(monkeypatch, folder):
    """Writes under `folder` fail with EACCES, as for a user without write permission (the tests
    may run as root, whom chmod does not stop)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    real_open, real_mkdir = os.open, os.mkdir

    def guarded(real):
        def call(path, *a, **k):
            if str(path).startswith(str(folder) + os.sep):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real(path, *a, **k)
        return call

    monkeypatch.setattr(os, "open", guarded(real_open))
    monkeypatch.setattr(os, "mkdir", guarded(real_mkdir))


@pytest.mark.parametrize("where", ["inside", "itself"])
def test_a_read_only_out_dir_is_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch, where):
    read_only(monkeypatch, tmp_path / "ro")
    out = tmp_path / "ro" / "run" if where == "inside" else tmp_path / "ro"
    monkeypatch.setattr(train, "load_base", lambda *a, **k: pytest.fail("loaded the model"))
    err = run_main(train.main, ONE + ["--steps", "1", "--out-dir", str(out)], capsys)
    assert "cannot write to" in err and "Permission denied" in err and "--out-dir" in err


def test_eval_checks_data_and_writability_before_it_loads_a_model(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "ro" / "run"
    (run_dir / "adapters").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"task": "math", "model": "tiny"}))
    monkeypatch.setattr(evaluation, "load_base", lambda *a, **k: pytest.fail("loaded the model"))
    err = run_main(evaluation.main, [str(run_dir), "--data", str(tmp_path / "nope.json")], capsys)
    assert "nope.json" in err and "not found" in err
    read_only(monkeypatch, tmp_path / "ro")
    err = run_main(evaluation.main, [str(run_dir), "--base"], capsys)
    assert f"cannot write to {run_dir}" in err and "copy the run" in err


def test_eval_every_with_missing_eval_data_fails_before_any_step(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train, "load_base", lambda *a, **k: pytest.fail("loaded the model"))
    err = run_main(train.main, ONE + ["--eval-every", "1", "--eval-data", str(tmp_path / "held.json"),
                                      "--out-dir", str(tmp_path / "run")], capsys)
    assert "held.json" in err and not (tmp_path / "run").exists()


def test_a_full_disk_during_a_save_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    real, calls = PeftModel.save_pretrained, []

    def full_disk(self, path, *a, **k):
        calls.append(path)
        real(self, path, *a, **k)  # some files land, then the disk is full
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(PeftModel, "save_pretrained", full_disk)
    err = run_main(train.main, ONE + ["--steps", "2", "--save-every", "1", "--out-dir", str(run_dir)], capsys)
    assert "could not save checkpoint step_000002" in err and "No space left on device" in err
    assert "the last intact checkpoint is step_000001" in err and f"--resume {run_dir}" in err
    assert [p.name for p in checkpoint.checkpoints(run_dir)] == ["step_000001"]
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    assert not (run_dir / "lock").exists() and (run_dir / "adapters" / "solver").is_dir()
    assert steps(run_dir) == [1, 2]  # resuming from step_000001 cuts this back (tested below)


def test_a_full_disk_while_mirroring_the_adapters_keeps_the_mirror(tmp_path, monkeypatch):
    (tmp_path / "adapters" / "solver").mkdir(parents=True)
    (tmp_path / "adapters" / "solver" / "w").write_text("old")

    def copy_half(src, dst, *a, **k):
        os.makedirs(dst)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "save", lambda run_dir, step, *a, **k: (
        shutil.copytree(tmp_path / "adapters", tmp_path / ".tmp_adapters")))
    monkeypatch.setattr(shutil, "copytree", copy_half)
    with pytest.raises(UserError, match="no checkpoint was written yet"):
        checkpoint.save_safely(tmp_path, 1)
    assert not (tmp_path / ".tmp_adapters").exists() and (tmp_path / "adapters" / "solver" / "w").read_text() == "old"


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fallback") / "run"
    train.main(ONE + ["--steps", "3", "--save-every", "1", "--keep-checkpoints", "3", "--out-dir", str(run_dir)])
    return run_dir


def test_resume_falls_back_to_the_newest_intact_checkpoint(three_checkpoints, tmp_path, capsys):
    """step 3's state file and step 2's adapter file are truncated: the run resumes from step 1."""
    run_dir = tmp_path / "run"
    shutil.copytree(three_checkpoints, run_dir)
    step1, step2, step3 = checkpoint.checkpoints(run_dir)
    for victim in (step3 / "state.pt", step2 / "adapters" / "executor" / "adapter_model.safetensors"):
        victim.write_bytes(victim.read_bytes()[:len(victim.read_bytes()) // 2])
    capsys.readouterr()
    train.main(["--resume", str(run_dir), "--steps", "2"])
    out = capsys.readouterr()
    warning = [line for line in out.err.splitlines() if "damaged" in line]
    assert len(warning) == 1 and "step_000003 (" in warning[0] and "step_000002 (" in warning[0], warning
    assert warning[0].endswith("resuming from step_000001 instead")
    assert "resumed" in out.out and "from step 1" in out.out
    assert steps(run_dir) == [1, 2]  # cut back to step 1, then step 2 again, once


def test_resume_with_every_checkpoint_damaged_is_one_line(three_checkpoints, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(three_checkpoints, run_dir)
    for ckpt in checkpoint.checkpoints(run_dir):
        (ckpt / "state.pt").write_bytes(b"\0" * 10)
    err = run_main(train.main, ["--resume", str(run_dir)], capsys)
    assert "no checkpoint of" in err and all(f"step_00000{i}" in err for i in (1, 2, 3))


def test_ctrl_c_is_one_line_and_the_run_resumes(tmp_path, capsys, monkeypatch):
    """A real SIGINT (Python's own handler turns it into KeyboardInterrupt) during step 2's update."""
    run_dir = tmp_path / "run"
    real, calls = train.update_agent, []

    def interrupted_update(*a, **k):
        calls.append(1)
        if len(calls) == 4:  # the first agent of step 2
            signal.raise_signal(signal.SIGINT)
        return real(*a, **k)

    monkeypatch.setattr(train, "update_agent", interrupted_update)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)  # Python's own, as in a terminal
    try:
        with pytest.raises(SystemExit) as e:
            train.main(ONE + ["--steps", "2", "--save-every", "1", "--out-dir", str(run_dir)])
    finally:
        signal.signal(signal.SIGINT, handler)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 130 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err == f"interrupted at step 2; resume with: python train.py --resume {run_dir} (from step_000001)"
    assert not (run_dir / "lock").exists()
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".tmp")]
    monkeypatch.undo()
    train.main(["--resume", str(run_dir)])
    assert steps(run_dir) == [1, 2]


def test_a_second_resume_of_a_run_in_use_is_refused(three_checkpoints, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    shutil.copytree(three_checkpoints, run_dir)
    write_lock(run_dir, os.getpid())  # a live writer: this very process
    before = (run_dir / "metrics.jsonl").read_text()
    monkeypatch.setattr(train, "load_base", lambda *a, **k: pytest.fail("loaded the model"))
    err = run_main(train.main, ["--resume", str(run_dir), "--steps", "4"], capsys)
    assert f"in use by process {os.getpid()}" in err
    assert (run_dir / "metrics.jsonl").read_text() == before and (run_dir / "lock").exists()
