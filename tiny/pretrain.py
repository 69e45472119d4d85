"""Pretrain the laptop model: a small Qwen2 that has read the math team's transcripts and the
coach's verdicts (tiny/transcripts.py), so `--preset laptop` trains a team that can learn.

    python -m tiny pretrain                # rebuilds tiny/laptop/ (the shipped weights)
    python -m tiny pretrain --minutes 0.2 --out /tmp/x   # a smoke build

Deterministic for a given recipe, seed and step count: the corpus is drawn from seeded RNGs and
torch runs on one thread. The folder loads through `from_pretrained` like any Hub model.
"""
from __future__ import annotations

import json
import math
import random
import sys
import time
from pathlib import Path

import torch

import tiny


RECIPE = dict(  # bump "version" when anything here or in transcripts.py changes
    version=4, seed=0, vocab_size=2560, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
    lr=2e-3, warmup=50, min_lr_ratio=0.1, betas=(0.9, 0.95), weight_decay=0.1,
    episodes_per_step=3, coach_per_episode=2.0, copy_per_step=8, coach_rationale=False,
    # phase 3: the coach learns to copy the two numbers it compares before its score (generate mode)
    phases=(600, 600, 500), phase_overrides=({}, {}, {"coach_per_episode": 4.0, "coach_rationale": True}),
    micro_tokens=4096,
    tokenizer_episodes=300)


def corpus_batch(problems, tokenizer, rng: random.Random, episodes: int, coach_rate: float, copies: int = 0,
                 rationale: bool = False):
    """(ids, mask) documents from `episodes` fresh scripted episodes: every agent's conversation
    and, on average, `coach_rate` coach verdicts per episode; plus `copies` copy drills."""
    from tiny import transcripts as T

    docs = [T.copy_document(tokenizer, rng) for _ in range(copies)]
    for _ in range(episodes):
        ep = T.play(rng.choice(problems), rng)
        docs += T.agent_documents(ep, tokenizer)
        k = int(coach_rate) + (rng.random() < coach_rate % 1)
        for a in rng.sample(ep.actions, min(k, len(ep.actions))):
            docs.append(T.coach_document(ep, a, tokenizer, rng, rationale))
    return docs


def collate(docs, pad_id: int):
    """Right-padded (input_ids [B, L], labels [B, L]) with -100 off the loss mask."""
    L = max(len(ids) for ids, _ in docs)
    ids = torch.full((len(docs), L), pad_id, dtype=torch.long)
    labels = torch.full((len(docs), L), -100, dtype=torch.long)
    for i, (d, m) in enumerate(docs):
        ids[i, :len(d)] = torch.tensor(d)
        labels[i, :len(d)] = torch.where(torch.tensor(m, dtype=torch.bool), torch.tensor(d), -100)
    return ids, labels


def micro_batches(docs, max_tokens: int):
    """Split length-sorted docs into chunks of at most max_tokens padded positions."""
    chunk = []
    for d in docs:
        if chunk and (len(chunk) + 1) * len(d[0]) > max_tokens:
            yield chunk
            chunk = []
        chunk.append(d)
    if chunk:
        yield chunk


# Numbers up to three digits are one token each (Qwen splits digits one by one). Copying a number
# out of the context -- the problem's numbers into code, the printed value into \boxed{} -- is
# then copying one token, which a 2M-parameter model learns in minutes; copying digit by digit
# never emerged in 40-minute builds (loss plateau, 0% right code at steps 250 and 500).
NUMBER_SPLIT = tiny.QWEN_SPLIT.replace(r"|\p{N}|", r"|\p{N}{1,3}|")


def build_tokenizer(problems, vocab_size: int, seed: int, episodes: int = 300):
    """Byte-level BPE fit to rendered transcripts; every number 0..999 is one token (NUMBER_SPLIT)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from agents import MATH
    from reward import coach_messages
    from tiny import transcripts as T

    rng, texts = random.Random(seed), [tiny.CORPUS] + [" ".join(map(str, range(1000)))] * 20
    probe = tiny.build_tokenizer()  # any ChatML tokenizer renders the text to fit on
    for _ in range(episodes):
        ep = T.play(rng.choice(problems), rng)
        for a in ep.actions:
            texts.append(probe.apply_chat_template(a.messages + [{"role": "assistant", "content": a.text}],
                                                   tokenize=False))
        texts.append(probe.apply_chat_template(coach_messages(
            ep, rng.choice(ep.actions), MATH, show_answer=True, rationale=False, answer_for_all=True,
            compact=True), tokenize=False))
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(NUMBER_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=tiny.SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    long = [n for n in range(1000) if len(tok.encode(str(n)).ids) != 1]
    if long:
        raise ValueError(f"vocab_size {vocab_size} is too small: {len(long)} numbers below 1000 take several tokens")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        chat_template=tiny.CHATML_TEMPLATE, padding_side="left", model_max_length=RECIPE["max_position_embeddings"])


def pretrain(out: Path, phases: tuple[int, ...] | None = None, log=print, snapshots: Path | None = None,
             snapshot_every: int = 150, start_from: Path | None = None, start_phase: int = 1, **overrides) -> dict:
    """Build the laptop model into `out`; returns the build's stats (also saved as build.json).

    The build runs RECIPE["phases"]: each phase is a fresh AdamW with warm-up and a cosine decay to
    0.1 x lr (a warm restart) on a fresh, seeded draw of the corpus, so phase k depends only on the
    weights phase k-1 left. `start_from` (a folder saved after `start_phase` phases) continues
    there, exactly as an uninterrupted build would. `overrides` replace RECIPE fields (tests build a smaller one)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config

    from tasks.problems import load_problems

    r = RECIPE | overrides
    phases = tuple(phases or r["phases"])
    torch.manual_seed(r["seed"])
    problems = load_problems("builtin-easy", "train")
    start_phase = start_phase if start_from is not None else 0
    if start_from is not None:
        tokenizer = AutoTokenizer.from_pretrained(start_from)
        model = AutoModelForCausalLM.from_pretrained(start_from, dtype=torch.float32)
    else:
        tokenizer = build_tokenizer(problems, r["vocab_size"], r["seed"], r["tokenizer_episodes"])
        config = Qwen2Config(
            vocab_size=len(tokenizer), hidden_size=r["hidden_size"], intermediate_size=r["intermediate_size"],
            num_hidden_layers=r["num_hidden_layers"], num_attention_heads=r["num_attention_heads"],
            num_key_value_heads=r["num_key_value_heads"], max_position_embeddings=r["max_position_embeddings"],
            tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
            eos_token_id=tokenizer.eos_token_id)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    t0, tokens, loss = time.time(), 0, float("nan")
    for k, steps in enumerate(phases):
        if k < start_phase:
            continue
        mix = r | dict(r["phase_overrides"][k] if k < len(r["phase_overrides"]) else {})
        n, loss = train_phase(model, tokenizer, problems, mix, steps, random.Random(r["seed"] + 1 + 1000 * k),
                              lambda m, k=k: log(f"phase {k + 1}/{len(phases)}  {m}  {(time.time() - t0) / 60:.1f} min"),
                              None if snapshots is None else snapshots / f"phase{k + 1}", snapshot_every)
        tokens += n
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    stats = dict(recipe=r | {"phases": phases}, parameters=sum(p.numel() for p in model.parameters()),
                 tokens_seen=tokens, minutes=round((time.time() - t0) / 60, 2), final_loss=round(loss, 4),
                 torch=torch.__version__, threads=torch.get_num_threads(),
                 started_from=None if start_from is None else f"the first {start_phase} phase(s) of the same recipe")
    (out / "build.json").write_text(json.dumps(stats, indent=1) + "\n")
    return stats


def train_phase(model, tokenizer, problems, r: dict, steps: int, rng: random.Random, log,
                snapshots: Path | None, snapshot_every: int) -> tuple[int, float]:
    """One phase: `steps` AdamW steps, warm-up then cosine to min_lr_ratio x lr. Returns (tokens
    seen, final smoothed loss per trained token)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": r["weight_decay"]},
                             {"params": other, "weight_decay": 0.0}], lr=r["lr"], betas=r["betas"])
    t0, tokens, ema = time.time(), 0, None
    warm = min(r["warmup"], steps)
    model.train()
    for step in range(1, steps + 1):
        decay_frac = (step - warm) / max(1, steps - warm)
        lr = r["lr"] * (step / warm if step <= warm else
                        r["min_lr_ratio"] + (1 - r["min_lr_ratio"]) * 0.5 * (1 + math.cos(math.pi * decay_frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        docs = sorted(corpus_batch(problems, tokenizer, rng, r["episodes_per_step"], r["coach_per_episode"],
                                   r["copy_per_step"], r["coach_rationale"]), key=lambda d: len(d[0]))
        n_loss = sum(sum(m) for _, m in docs)
        opt.zero_grad(set_to_none=True)
        total_loss = 0.0
        for chunk in micro_batches(docs, r["micro_tokens"]):  # similar lengths together: little padding
            ids, labels = collate(chunk, tokenizer.pad_token_id)
            logits = model(input_ids=ids, attention_mask=(ids != tokenizer.pad_token_id).long()).logits
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                                     ignore_index=-100, reduction="sum") / n_loss
            loss.backward()
            total_loss += loss.item()
            tokens += sum(len(d) for d, _ in chunk)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema = total_loss if ema is None else 0.98 * ema + 0.02 * total_loss
        if step % 50 == 0 or step == steps:
            log(f"step {step}/{steps}  loss {ema:.3f}  lr {lr:.2e}  {tokens / (time.time() - t0):.0f} tok/s")
        if snapshots is not None and step % snapshot_every == 0:  # look at a build while it runs
            model.save_pretrained(snapshots / f"step{step}")
            tokenizer.save_pretrained(snapshots / f"step{step}")
    model.eval()
    return tokens, ema


if __name__ == "__main__":
    sys.exit("run: python -m tiny pretrain")
