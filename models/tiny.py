"""Build tiny random chat models offline ("tiny", "tiny-50m"), so the whole loop runs anywhere in a minute.

`python train.py --preset tiny` asks for the model "tiny". Nothing is downloaded: we train a
byte-level BPE tokenizer on a small built-in corpus (well under a second), give it a ChatML chat
template, initialise a random Qwen2 model, and `save_pretrained` both into a cache folder. The
trainer then loads that folder through `AutoModelForCausalLM.from_pretrained`, the same code path
a real Hub model takes.

Two details make a random model usable as a stand-in:
- The pre-tokenizer splits digits one by one and keeps a space separate from a following digit,
  as Qwen2's does, so "PROCESS_SCORE: 7" tokenizes like it would for a real model (reward.py's
  logit coach relies on this).
- A random model almost never emits its end-of-turn token, and an action cut off by the length
  limit gets zero loss (SPEC §4), so nothing would train. We calibrate the end-of-turn logit to
  a near-constant bias (see build_model), so an action stops after ~`mean_action_tokens` tokens.
"""
import os
import shutil
from pathlib import Path

# Bump when the recipe changes, so cached folders are rebuilt rather than silently reused.
RECIPE_VERSION = 4

SIZES = {  # name -> Qwen2 config overrides; all widths multiples of 64 (bitsandbytes on CPU, SPEC §6)
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2),
    "tiny-50m": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=16,
                     num_attention_heads=8, num_key_value_heads=4),
}

CHATML_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m['content'] }}\n</tool_response><|im_end|>\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Qwen2's pre-tokenizer pattern: single digits, and no space glued onto a number.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")

CORPUS = """You are the Problem Solver. Reason step by step and put the final answer in \\boxed{}.
You are the Code Executor. Write Python in ```python blocks; the code is run and you see its output.
You are the Verifier. Check the work and give the final answer as \\boxed{answer}.
Maria has 12 apples. She buys 3 bags with 7 apples each and gives 5 apples to her friend.
How many apples does she have now? A train travels 60 miles per hour for 3 hours.
```python
x = 12 + 3 * 7 - 5
print(x)
```
import pandas as pd
from sklearn.linear_model import LogisticRegression
df = pd.read_csv("train.csv"); X = df.drop(columns=["target"]); y = df["target"]
model.fit(X, y); pd.to_pickle(model, "model.pkl"); submission.to_csv("submission.csv", index=False)
PROCESS_SCORE: 7 The action is correct and clearly explained. The answer is \\boxed{28}.
[stderr] Traceback (most recent call last): NameError: name 'y' is not defined [Exit code 1]
0 1 2 3 4 5 6 7 8 9 10 + - * / = ( ) [ ] { } < > , . : ; ! ? ' " # % & _
"""


def cache_root() -> Path:
    # absolute: a run's adapter_config.json records the model folder, and must work from any folder
    return Path(os.environ.get("MAPPA_CACHE", Path.home() / ".cache" / "mappa")).expanduser().absolute()


def build_tokenizer(vocab_size: int = 1024):
    """A Qwen2-style byte-level BPE tokenizer with a ChatML template, trained on CORPUS."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE, padding_side="left", model_max_length=4096)


def build_model(size: str, tokenizer, mean_action_tokens: int = 16, seed: int = 0):
    """A random Qwen2 causal LM of the given SIZES entry whose actions end after ~mean_action_tokens."""
    import torch  # lazy: `models` is imported by config.py, which must stay light
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(seed)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = Qwen2Config(vocab_size=len(tokenizer), max_position_embeddings=4096,
                         tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None, eos_token_id=eos, **SIZES[size])
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    with torch.no_grad():
        # A constant feature gives every final hidden state a shared direction mu ...
        emb[:, 0] = emb.std() * emb.shape[1] ** 0.5 * 0.5
        # ... and the <|im_end|> row aimed along mu turns it into a bias on the end-of-turn logit:
        # logit_eos = h . w ~ b for every h, so P(end) ~ e^b / vocab per token.
        chat = tokenizer.apply_chat_template(
            [{"role": "system", "content": CORPUS[:400]}, {"role": "user", "content": CORPUS[400:]}],
            add_generation_prompt=True, return_dict=False)
        text = tokenizer.encode(CORPUS)[:256]
        h = torch.cat([model.model(torch.tensor([ids])).last_hidden_state[0] for ids in (chat, text)])
        mu = h.mean(dim=0)
        b = torch.log(torch.tensor(len(tokenizer) / mean_action_tokens))
        head[eos] = b * mu / mu.dot(mu)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def ensure_tiny_model(size: str = "tiny") -> Path:
    """Build (once) and return the folder of a tiny random model; later calls reuse the cache."""
    if size not in SIZES:
        raise ValueError(f"unknown tiny model '{size}'; choose one of {sorted(SIZES)}")
    folder = cache_root() / f"{size}-v{RECIPE_VERSION}"
    if (folder / "config.json").exists():
        return folder
    tokenizer = build_tokenizer()
    model = build_model(size, tokenizer)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:  # atomic: a half-built folder is never used, and a concurrent builder's folder wins
        tmp.rename(folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder

