"""The peer for the benchmark's row 3: one TRL GRPOTrainer step with a LoRA config, on our model.

TRL is a benchmark-only dependency (`pip install trl==1.16.0`, see docs/speed.md); it is imported
here, lazily, and nowhere else. Settings are matched to the MAPPA step as closely as TRL allows:
the same base model object type and precision, the same LoRA (rank, alpha, all-linear, no
dropout), the same prompts (the solver's system + user turn), the same completions per generate
call, max new tokens, temperature 1 with no top-k/top-p, KL beta, learning rate, one optimiser
pass per rollout batch, and gradient checkpointing on/off as in the MAPPA step.
"""
import contextlib
import io

import torch

from bench.measure import now


def grpo_step_runs(model_name: str, device: str, load_in_4bit: bool, prompts: list[list[dict]], *,
                   num_generations: int, max_completion_length: int, lr: float, beta: float, lora_r: int,
                   lora_alpha: int, gradient_checkpointing: bool, steps: int, between=None,
                   out_dir: str, dtype: str | None = None, micro_batch: int | None = None) -> list[dict]:
    """Run `steps` GRPO steps; return one {"seconds", "tokens"} per step (tokens: completion tokens
    generated in that step). `between()` is called after each step, outside its timing: bench/rows.py
    runs its MAPPA step there, so the two alternate and share whatever load the machine has.

    One step = one generate call over len(prompts) * num_generations completions (one prompt
    group per prompt), the reward, the reference pass (beta > 0), one optimiser step. dtype: --dtype
    of the base (load_base; its forwards autocast) and TRL's bf16/fp16 flags to match (None: bf16 on CUDA).
    micro_batch: rows per forward/backward (gradient accumulation; generation stays one batch)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from agents import load_base

    tokenizer, base = load_base(model_name, load_in_4bit, device, dtype)
    mixed = peer_precision(base)  # the dtype load_base gave the MAPPA side (--dtype)
    counted: list[int] = []

    def dummy_reward(prompts, completions, completion_ids, **_):
        """A fixed, varied reward: GRPO needs non-zero variance within a group to have a loss."""
        counted.append(sum(len(c) for c in completion_ids))
        return [float(i % 3) / 2 for i in range(len(completions))]

    runs: list[dict] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = now()

        def on_step_end(self, args, state, control, **kwargs):
            runs.append({"seconds": now() - self.t0, "tokens": sum(counted)})
            counted.clear()
            if between is not None:
                between()

    batch = len(prompts) * num_generations
    micro = micro_batch or batch  # one generate over the batch; the training pass in micro-batches
    on_cuda = device.startswith("cuda")
    args = GRPOConfig(
        output_dir=out_dir, per_device_train_batch_size=micro, gradient_accumulation_steps=batch // micro,
        num_generations=num_generations, max_completion_length=max_completion_length, temperature=1.0,
        top_k=0, top_p=1.0, beta=beta, learning_rate=lr, num_iterations=1, max_steps=steps,
        gradient_checkpointing=gradient_checkpointing, **mixed, use_cpu=not on_cuda, seed=0,
        logging_steps=10**6, report_to=[], save_strategy="no", disable_tqdm=True, shuffle_dataset=False,
        dataloader_num_workers=0, max_grad_norm=1.0, weight_decay=0.0, lr_scheduler_type="constant")
    dataset = Dataset.from_list([{"prompt": p} for p in prompts] * (steps + 1))
    lora = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=base, reward_funcs=dummy_reward, args=args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=lora, callbacks=[Clock()])
    with contextlib.redirect_stdout(io.StringIO()):  # Trainer prints its metrics dict at the end
        trainer.train()
    del trainer, base
    if on_cuda:
        torch.cuda.empty_cache()
    return runs


def peer_precision(base) -> dict:
    """TRL's mixed-precision flags for the dtype the MAPPA side computes in: the base's own dtype as
    agents.load_base chose it (bf16 on a GPU by default; whatever --dtype asks), so both sides run
    the same precision (issue 29: the peer ran bf16 autocast while MAPPA's dtype was another)."""
    dtype = base.dtype
    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16}
