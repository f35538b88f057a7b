"""The tiny-model fixture itself: a real HF directory that transformers loads, with a working tokenizer."""

from __future__ import annotations

from pathlib import Path


def test_tiny_model_loads_and_round_trips(tiny_model: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    config = AutoConfig.from_pretrained(tiny_model)
    assert config.model_type == "llama" and config.hidden_size == 64 and config.head_dim >= 32
    text = "<think>\n12 + 30 = 42\n</think>\nThe answer is \\boxed{42}."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    ids = tok(prompt, return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 4 or int(out[0, -1]) == tok.eos_token_id


def test_tiny_tokenizer_makes_every_digit_a_token(tiny_model: Path, tmp_path: Path) -> None:
    from tiny_model import build_tokenizer
    from transformers import AutoTokenizer

    text = "What is 47 + 385? <think>\n7 + 5 = 12\n</think>\n\\boxed{432} 1000000"

    def digit_runs(tok: object) -> list[str]:
        pieces = [tok.decode([i]) for i in tok(text, add_special_tokens=False)["input_ids"]]  # type: ignore[attr-defined]
        return [p for p in pieces if sum(c.isdigit() for c in p) > 1]

    assert digit_runs(AutoTokenizer.from_pretrained(tiny_model)) == []
    assert digit_runs(build_tokenizer(tmp_path, split_digits=False))  # BPE alone merges numbers
