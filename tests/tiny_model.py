"""Tiny random causal LMs for tests and the demo: no hub, built in seconds on a CPU.

A byte-level BPE tokenizer trained with ``tokenizers`` on a small generated corpus (every digit its
own token, as in Qwen2.5 and the R1 distills), a ChatML chat template, and a Llama-shaped model
(hidden 64, head_dim 32, a few layers) with random weights, saved as a normal Hugging Face
directory so that every test loads it through the real loading code.

    python tests/tiny_model.py OUT_DIR [--seed 0] [--layers 2] [--hidden 64] [--heads 2] [--vocab-size 512]
                               [--tied] [--dtype float32] [--merge-digits]
    python tests/tiny_model.py OUT_DIR --reward [--seed 7]     # a reward model (classification head)

Llama config on purpose: with a ``qwen2`` config, transformers 5 hands back Qwen's own pre-tokenizer
and the ids no longer match the trained tokenizer.json.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# ChatML, as Qwen2.5 and the R1 distills' bases use it. The generation prompt opens the assistant
# turn; reasoning in earlier assistant turns is kept (no stripping of <think>).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _corpus(seed: int, lines: int = 3000) -> list[str]:
    """Text shaped like the pipeline's data: arithmetic, boxed answers, think blocks, prose."""
    rng = random.Random(seed)
    words = (
        "the a of to and is in what find how many sum product number answer please reason step by "
        "put your final within boxed so we get total each first then add carry digit sort list "
        "multiply result question solve value write code function return def print test"
    ).split()
    out = []
    for _ in range(lines):
        a, b = rng.randint(0, 999), rng.randint(0, 999)
        prose = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
        out.append(f"What is {a} + {b}? {prose}")
        out.append(f"<think>\n{a} + {b} = {a + b}\n</think>\nThe answer is \\boxed{{{a + b}}}.")
        out.append(f"def f(x):\n    return x * {a} - {b}\nprint(f({b}))")
    # Made-up words: enough pairs to merge for any --vocab-size once digits no longer merge.
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    words_rng = random.Random(seed + 1)
    for _ in range(lines):
        out.append(" ".join("".join(words_rng.choices(syllables, k=words_rng.randint(1, 4))) for _ in range(8)))
    return out


def build_tokenizer(out: Path, seed: int = 0, vocab_size: int = 512, split_digits: bool = True) -> Any:
    """Train the byte-level BPE tokenizer and save it to ``out``.

    ``split_digits`` (the default) makes every digit its own token, as Qwen2.5, the R1 distills and
    Llama-style tokenizers split numbers: otherwise BPE merges frequent numbers ("85", " 4") into
    single tokens and a tiny model has to learn arithmetic over a few hundred opaque number tokens.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if split_digits
        else byte_level
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<pad>",
        padding_side="left",
        chat_template=CHATML_TEMPLATE,
    )
    fast.save_pretrained(str(out))
    return fast


def build_tiny_model(
    out: str | Path,
    *,
    seed: int = 0,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 2,
    tied: bool = False,
    dtype: str = "float32",
    vocab_size: int = 512,
    tokenizer_seed: int = 0,
    split_digits: bool = True,
) -> Path:
    """Write a random Llama-shaped model with a trained tokenizer to ``out``; return the path.

    Models built with the same ``tokenizer_seed`` share one tokenizer (same ids); ``seed`` only
    changes the weights, so they can be merged, distilled into each other and compared.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out, seed=tokenizer_seed, vocab_size=vocab_size, split_digits=split_digits)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden // heads,
        max_position_embeddings=4096,
        tie_word_embeddings=tied,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model.save_pretrained(str(out))
    (out / "still_tiny_model.json").write_text(
        json.dumps({"seed": seed, "layers": layers, "hidden": hidden, "tied": tied, "dtype": dtype}) + "\n"
    )
    return out


def build_tiny_reward_model(out: str | Path, *, seed: int = 7, head_scale: float = 40.0) -> Path:
    """Write a random Llama with a one-output classification head (a reward model) on the tiny
    tokenizer to ``out``; the head is scaled so that scores spread over (0, 1)."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForSequenceClassification(config)
    with torch.no_grad():
        model.score.weight.mul_(head_scale)
    model.save_pretrained(str(out))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=512, help="263 = bytes and special tokens only")
    parser.add_argument("--tied", action="store_true")
    parser.add_argument("--merge-digits", action="store_true", help="let BPE merge digits into number tokens")
    parser.add_argument("--reward", action="store_true", help="a reward model (one-output classification head)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    if args.reward:
        print(build_tiny_reward_model(args.out, seed=args.seed))
        return
    path = build_tiny_model(
        args.out,
        seed=args.seed,
        layers=args.layers,
        hidden=args.hidden,
        heads=args.heads,
        tied=args.tied,
        dtype=args.dtype,
        vocab_size=args.vocab_size,
        split_digits=not args.merge_digits,
    )
    print(path)


if __name__ == "__main__":
    main()
