"""Tests for the sandbox package (sandbox/__init__.py, sandbox/child.py): every threat is a REAL hostile program run through run_code.

Where the two isolation modes differ ("namespaces" vs the "plain" fallback), a test branches on
what this machine allows, probed independently of the sandbox package (NS_HERE), and asserts what that
mode guarantees; test_plain_fallback_* also runs the fallback here."""
import pytest

from sandbox import ExecResult, Limits, extract_code_blocks, run_code, run_many, workspace
from tests.sandbox_helpers import FAST, NETNS_HERE, NEW_KERNEL, NS_HERE, PREFIX
from tests.sandbox_helpers import feats, no_leftovers, wd  # noqa: F401 -- fixtures


def test_features_match_what_this_machine_allows(feats):
    assert feats["mode"] == ("namespaces" if NS_HERE else "plain")
    assert bool(feats.get("netns")) == NETNS_HERE
    if NS_HERE:  # every layer must have come up
        assert all(feats[k] for k in ("proc", "readonly_root", "minimal_dev", "private_tmp", "hidden")), feats
        assert bool(feats["pid_max"]) == NEW_KERNEL


# ----------------------------------------------------------------------------- pure helpers
def test_extract_code_blocks_order_aliases_and_other_fences():
    text = ("intro\n```python\nx = 1\n```\n```bash\nrm -rf /\n```\n```py\ny = 2\n```\n"
            "```\nplain\n```\n```Python3\nz = 3\n```")
    assert extract_code_blocks(text) == ["x = 1", "y = 2", "z = 3"]


def test_extract_code_blocks_unclosed_final_fence_and_inline_close():
    assert extract_code_blocks("a\n```python\nprint(1)\nprint(2)") == ["print(1)\nprint(2)"]
    assert extract_code_blocks("```python\nprint(1)```\ntext") == ["print(1)"]
    assert extract_code_blocks("no code here") == []


def test_extract_code_blocks_dedents_indented_fence():
    text = "1. step\n   ```python\n   if x:\n       y()\n   ```\n"
    assert extract_code_blocks(text) == ["if x:\n    y()"]


def _res(**kw) -> ExecResult:
    base = dict(status="ok", stdout="", stderr="", returncode=0, truncated=False, message="", seconds=0.1)
    return ExecResult(**{**base, **kw})


def test_as_tool_output_formats():
    assert _res(stdout="hi\n").as_tool_output() == "hi\n"
    assert _res().as_tool_output() == "[No output]"
    assert _res(stdout="a", stderr="boom", status="error", returncode=1).as_tool_output() == \
        "a\n[stderr]\nboom\n[Exit code 1]"
    assert _res(status="timeout", returncode=None, message="time limit (2 s) exceeded").as_tool_output() == \
        "[No output]\n[Execution timeout: time limit (2 s) exceeded]"
    assert _res(stdout="x", status="killed", message="memory limit (1024 MB) exceeded").as_tool_output() == \
        "x\n[Killed: memory limit (1024 MB) exceeded]"
    assert _res(stdout="x", truncated=True).as_tool_output().endswith("[Output truncated]")


def test_as_tool_output_keeps_head_tail_and_status_within_max_chars():
    out = _res(stdout="HEAD" + "x" * 10_000 + "TAIL", status="error", returncode=2).as_tool_output(300)
    assert len(out) <= 300
    assert out.startswith("HEAD") and "TAIL" in out and out.endswith("[Exit code 2]")


def test_workspace_removed_even_after_chmod_and_exception():
    with pytest.raises(RuntimeError):
        with workspace(PREFIX) as path:
            r = run_code("import os\nos.makedirs('a/b')\nopen('a/b/f', 'w').write('x')\n"
                         "os.chmod('a/b', 0)\nos.chmod('a', 0)\nos.chmod('.', 0o500)", path, FAST)
            assert r.status == "ok", r.as_tool_output()
            raise RuntimeError("body failed")
    assert not path.exists()


def test_bad_workdir_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        run_code("print(1)", tmp_path / "missing")


# ----------------------------------------------------------------------------- normal use
def test_files_persist_between_actions_and_sklearn_works_under_default_limits(wd):
    code = ("import numpy as np, pandas as pd\nfrom sklearn.linear_model import LogisticRegression\n"
            "rng = np.random.default_rng(0); X = rng.normal(size=(300, 4)); y = (X[:, 0] > 0).astype(int)\n"
            "pd.DataFrame(X).assign(y=y).to_csv('data.csv', index=False)\n"
            "m = LogisticRegression().fit(X, y)\nprint('acc', m.score(X, y) > 0.9)")
    r = run_code(code, wd)  # default Limits: 1 GB address space, 10 s
    assert (r.status, r.stdout.strip()) == ("ok", "acc True"), r.as_tool_output()
    r2 = run_code("import pandas as pd\nprint(len(pd.read_csv('data.csv')))", wd)
    assert r2.stdout.strip() == "300"


def test_run_many_keeps_order_and_runs_concurrently(wd):
    # a and b each wait for the other's file: both succeed only if they run at the same time
    wait = "import os, time\nopen('{me}', 'w').close()\nwhile not os.path.exists('{other}'): time.sleep(0.01)\nprint('{me}')"
    jobs = [(wait.format(me="a", other="b"), wd), (wait.format(me="b", other="a"), wd),
            ("print(3)", wd), ("raise SystemExit(4)", wd)]
    res = run_many(jobs, Limits(timeout_s=5), max_workers=2)
    assert [r.stdout.strip() for r in res] == ["a", "b", "3", ""]
    assert [r.status for r in res] == ["ok", "ok", "ok", "error"] and res[3].returncode == 4
    assert run_many([]) == []


def test_run_code_works_from_any_trainer_cwd(wd, tmp_path, monkeypatch):
    # The trainer may be started from another folder (`python /path/to/train.py`); decoys named
    # like the child module or a module it imports, in the trainer's cwd and in the workdir,
    # must not be picked up: the child runs by absolute path, its sys.path excludes both.
    for folder in (tmp_path, wd):
        for name in ("child.py", "json.py", "signal.py"):
            (folder / name).write_text("import os\nos._exit(99)\n")
    (wd / "helper.py").write_text("X = 7\n")
    monkeypatch.chdir(tmp_path)
    r = run_code("import os, helper\nprint(os.getcwd(), helper.X)", wd, FAST)  # workdir importable, like `python -c`
    assert (r.status, r.stdout) == ("ok", f"{wd} 7\n"), r.as_tool_output()


