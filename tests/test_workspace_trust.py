"""The data task does not trust the workspace (issue 15): grading opens submission.csv without
following links and reads nothing else; the hidden answers cannot be rebuilt from inside an action;
a workspace of many files gives a short listing. Every hostile file is made by a REAL action."""
import os

import pytest

import sandbox
from sandbox import Limits, run_code
from tasks import submission, tabular, workspace
from tests.sandbox_helpers import NS_HERE
from tests.sandbox_helpers import no_leftovers, wd  # noqa: F401 -- fixtures

TASK = tabular.builtin_tabular("train", 1)[0]


@pytest.fixture
def data_wd(wd):
    tabular.write_workspace(TASK, wd)
    return wd


def act(code, wd, timeout_s=20.0):
    r = run_code(code, wd, Limits(timeout_s=timeout_s))
    assert r.status == "ok", r.as_tool_output()
    return r


@pytest.mark.parametrize("target", ["/proc/self/environ", "SECRET_FILE"])
def test_a_linked_submission_is_refused_and_never_read(data_wd, tmp_path, monkeypatch, target):
    monkeypatch.setenv("MAPPA_TEST_TOKEN", "hf_trainer_secret")
    secret = tmp_path / "secret.csv"  # a file only the trainer can see, shaped like a submission
    secret.write_text(f"{TASK.id_col},{TASK.target}\nhf_trainer_secret,1\n")
    target = str(secret) if target == "SECRET_FILE" else target
    act(f"import os\nos.symlink({target!r}, 'submission.csv')", data_wd)
    out = submission.score_submission(TASK, data_wd / "submission.csv")
    assert out["reason"] == "submission.csv is not a regular file (a symbolic link)"
    assert "hf_trainer_secret" not in str(out)


def test_a_fifo_or_folder_submission_is_refused_without_hanging(data_wd):
    act("import os\nos.mkfifo('submission.csv')", data_wd)
    assert submission.score_submission(TASK, data_wd / "submission.csv")["reason"] == \
        "submission.csv is not a regular file"
    os.remove(data_wd / "submission.csv")
    act("import os\nos.mkdir('submission.csv')", data_wd)
    assert "not a regular file" in submission.score_submission(TASK, data_wd / "submission.csv")["reason"]


def test_a_huge_submission_is_refused_unread(data_wd):
    act("with open('submission.csv', 'wb') as f:\n    f.truncate(17 << 20)", data_wd)  # sparse: no disk used
    out = submission.score_submission(TASK, data_wd / "submission.csv")
    assert out["reason"] == f"submission.csv is {17 << 20} bytes, over the {16 << 20}-byte cap"


def test_an_action_cannot_rebuild_the_hidden_answers_from_the_project(data_wd):
    project = str(sandbox._PROJECT)
    code = f"""
import sys
sys.path.insert(0, {project!r})
try:
    from tasks import tabular
except ImportError as e:
    print('no generator:', e)
else:
    task = next(t for t in tabular.builtin_tabular('train', 3) if t.id == {TASK.id!r})
    task.answers.to_csv('submission.csv', index=False)
"""
    r = act(code, data_wd, timeout_s=30)
    out = submission.score_submission(TASK, data_wd / "submission.csv")
    if NS_HERE:  # the project is hidden from the action
        assert r.stdout.startswith("no generator:") and out["reason"] == "submission.csv not found"
    else:  # plain mode: the file system is the host's (documented)
        assert out["accuracy"] == 1.0


def test_many_files_give_a_short_listing(wd):
    act("import os\nos.mkdir('d')\nfor i in range(3000): open(f'd/f{i:05d}', 'w').close()\n"
        "open('submission.csv', 'w').close()\nos.symlink('/proc/self/environ', 'link.csv')", wd)
    files = workspace.workspace_files(wd)
    assert len(files) == workspace.MAX_ENTRIES + 1 and "link.csv" not in files
    text = workspace.describe_files(files)
    assert text.endswith(f", ... {3001 - workspace.MAX_ENTRIES} more") and len(text) < 8000
    # a budget of no time at all still gives an answer, not a hang
    assert workspace.MORE in workspace.workspace_files(wd, budget_s=0.0)
