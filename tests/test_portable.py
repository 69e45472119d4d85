"""A run folder works from any folder: local --model/--data paths are stored absolute in config.json
and in every adapter_config.json, so eval.py and peft's AutoPeftModelForCausalLM find them."""
import json
import shutil

import train
import eval as evaluation


def test_a_run_with_relative_paths_evaluates_and_loads_from_another_folder(tmp_path, monkeypatch, tiny_cache, capsys):
    from models import tiny
    start, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    start.mkdir(), elsewhere.mkdir()
    shutil.copytree(tiny.ensure_tiny_model("tiny"), start / "mymodel")
    (start / "held.jsonl").write_text('{"problem": "What is 2+3?", "answer": 5}\n')
    monkeypatch.chdir(start)
    train.main(["--preset", "tiny", "--model", "./mymodel", "--eval-data", "./held.jsonl", "--steps", "1",
                "--problems-per-step", "1", "--samples-per-problem", "1", "--max-new-tokens", "12", "--out-dir", "run"])
    cfg = json.loads((start / "run" / "config.json").read_text())
    assert cfg["model"] == str(start / "mymodel") and cfg["eval_data"] == str(start / "held.jsonl")
    for agent in ("solver", "executor", "verifier"):
        adapter = json.loads((start / "run" / "adapters" / agent / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == str(start / "mymodel")

    monkeypatch.chdir(elsewhere)
    from peft import AutoPeftModelForCausalLM
    model = AutoPeftModelForCausalLM.from_pretrained(str(start / "run" / "adapters" / "verifier"))
    assert any("lora_B" in n for n, _ in model.named_parameters())
    capsys.readouterr()
    evaluation.main([str(start / "run"), "--k", "1", "--no-coach"])  # the run's model and held-out file
    assert "avg@1" in capsys.readouterr().out
    result = json.loads((start / "run" / "eval.json").read_text())
    assert result["summary"]["tasks"] == 1 and result["settings"]["data"] == str(start / "held.jsonl")
