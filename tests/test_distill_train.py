"""still distill-train: masks, packing, losses against fp64 references, GA invariance, resume, CLI."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
from conftest import run_still

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from still.core.jsonl import Record  # noqa: E402
from still.core.stats import RunStats  # noqa: E402
from still.core.train_batches import Collator, Row  # noqa: E402
from still.core.train_data import IGNORE, ChatMasker, Example, LengthPolicy, encode_records  # noqa: E402
from still.core.train_losses import chunked_kd, divergence, sparse_fkl, sparse_targets, weighted_ce  # noqa: E402

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
# DeepSeek-R1-Distill's template, reduced to what matters: it strips reasoning from every assistant
# turn it renders and opens the generation prompt with <think>.
R1_TEMPLATE = (
    "{% set ns = namespace(system_prompt='') %}"
    "{% for message in messages %}{% if message['role'] == 'system' %}{% set ns.system_prompt = message['content'] %}"
    "{% endif %}{% endfor %}{{ bos_token }}{{ ns.system_prompt }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)
# Qwen3-style: the turn after the last user message gets a think block, empty when it has none.
QWEN3_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{% set content = message['content'] %}"
    "{% if '</think>' in content %}{{ '<|im_start|>assistant\n' + content + '<|im_end|>\n' }}"
    "{% elif loop.last %}{{ '<|im_start|>assistant\n<think>\n\n</think>\n\n' + content + '<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>assistant\n' + content + '<|im_end|>\n' }}{% endif %}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
EXTRA_TOKENS = [
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<｜User｜>",
    "<｜Assistant｜>",
    "<｜end▁of▁sentence｜>",
]

TWO_TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 3?"},
    {"role": "assistant", "content": "<think>\n2 + 3 = 5\n</think>\nThe answer is \\boxed{5}."},
    {"role": "user", "content": "And 4 + 4?"},
    {"role": "assistant", "content": "<think>\n4 + 4 = 8\n</think>\n\\boxed{8}"},
]


@pytest.fixture(scope="module")
def tok(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tiny_model)
    t.add_tokens(EXTRA_TOKENS, special_tokens=True)
    return t


def _check_mask(tok: Any, template: str | None, messages: list[dict[str, str]], golden: list[tuple[str, bool]]):
    masker = ChatMasker(tok, template)
    assert masker.pieces(messages) == golden
    ex = masker.encode(messages)
    # token by token: every id is the golden piece's own tokens, supervised exactly where golden says
    want_ids: list[int] = []
    want_labels: list[int] = []
    for text, sup in golden:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        want_ids += ids
        want_labels += ids if sup else [IGNORE] * len(ids)
    assert ex.input_ids == want_ids
    assert ex.labels == want_labels
    supervised_text = tok.decode([i for i, y in zip(ex.input_ids, ex.labels) if y != IGNORE])
    assert supervised_text == "".join(t for t, s in golden if s)
    return ex


def test_mask_chatml_multi_turn_keeps_think(tok: Any) -> None:
    golden = [
        (
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
            "<|im_start|>assistant\n",
            False,
        ),
        ("<think>\n2 + 3 = 5\n</think>\nThe answer is \\boxed{5}.<|im_end|>", True),
        ("\n<|im_start|>user\nAnd 4 + 4?<|im_end|>\n<|im_start|>assistant\n", False),
        ("<think>\n4 + 4 = 8\n</think>\n\\boxed{8}<|im_end|>", True),
    ]
    ex = _check_mask(tok, None, TWO_TURNS, golden)
    assert tok.convert_ids_to_tokens(ex.input_ids[-1]) == "<|im_end|>" and ex.labels[-1] != IGNORE


def test_mask_llama3(tok: Any) -> None:
    golden = [
        (
            "<s><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2 + 3?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            False,
        ),
        ("<think>\n2 + 3 = 5\n</think>\nThe answer is \\boxed{5}.<|eot_id|>", True),
        (
            "<|start_header_id|>user<|end_header_id|>\n\nAnd 4 + 4?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n",
            False,
        ),
        ("<think>\n4 + 4 = 8\n</think>\n\\boxed{8}<|eot_id|>", True),
    ]
    _check_mask(tok, LLAMA3_TEMPLATE, TWO_TURNS, golden)


def test_mask_r1_distill_keeps_reasoning_the_template_strips(tok: Any) -> None:
    golden = [
        ("<s>Be brief.<｜User｜>What is 2 + 3?<｜Assistant｜>", False),
        ("<think>\n2 + 3 = 5\n</think>\nThe answer is \\boxed{5}.<｜end▁of▁sentence｜>", True),
        ("<｜User｜>And 4 + 4?<｜Assistant｜>", False),
        ("<think>\n4 + 4 = 8\n</think>\n\\boxed{8}<｜end▁of▁sentence｜>", True),
    ]
    _check_mask(tok, R1_TEMPLATE, TWO_TURNS, golden)
    # a response sampled from R1 lacks the opening <think>: the generation prompt's one stays in the prompt
    short = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "hello\n</think>\n\nHello!"}]
    golden = [
        ("<s><｜User｜>Hi<｜Assistant｜><think>\n", False),
        ("hello\n</think>\n\nHello!<｜end▁of▁sentence｜>", True),
    ]
    _check_mask(tok, R1_TEMPLATE, short, golden)


def test_mask_qwen3_empty_think_block(tok: Any) -> None:
    plain = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    golden = [
        ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", False),
        ("<think>\n\n</think>\n\nHello!<|im_end|>", True),
    ]
    _check_mask(tok, QWEN3_TEMPLATE, plain, golden)
    thinking = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>\nhm\n</think>\n\nHello!"}]
    golden = [
        ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", False),
        ("<think>\nhm\n</think>\n\nHello!<|im_end|>", True),
    ]
    _check_mask(tok, QWEN3_TEMPLATE, thinking, golden)


def _records(rows: list[dict[str, Any]]) -> list[Record]:
    return [Record(r, None, "d.jsonl", i + 1) for i, r in enumerate(rows)]


def test_query_response_rows_and_truncation_policy(tok: Any) -> None:
    from still.core.fields import Fields

    rows = [{"query": "What is 2 + 3?", "response": "5 " * n} for n in (2, 200)]
    masker = ChatMasker(tok)
    stats = RunStats("t")
    kept = list(encode_records(_records(rows), masker, Fields(), LengthPolicy(64, "drop"), stats))
    assert len(kept) == 1 and stats.dropped["longer than --max-length"] == 1
    stats = RunStats("t")
    cut = list(encode_records(_records(rows), masker, Fields(), LengthPolicy(64, "truncate"), stats))
    assert [len(e.input_ids) for e in cut][1] == 64 and stats.extra["truncated"] == 1


# ---- packing: per-example loss and gradients equal to unpacked runs --------------------------------


def _examples(n: int, seed: int, vocab: int, lengths: tuple[int, ...] = (9, 17, 5, 12)) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = lengths[i % len(lengths)]
        ids = [rng.randrange(8, vocab) for _ in range(length)]
        cut = rng.randrange(1, length - 2)
        out.append(Example(ids, [IGNORE] * cut + ids[cut:]))
    return out


def _unpacked_loss(model: Any, ex: Example) -> Any:
    logits = model(input_ids=torch.tensor([ex.input_ids])).logits[0].double()
    targets = torch.tensor(ex.shifted_labels())
    return torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")


def _packed_losses(model: Any, examples: list[Example]) -> list[Any]:
    from still.core.train_model import HiddenCapture

    capture = HiddenCapture(model)
    batch = Collator(examples)([Row(tuple(range(len(examples))))])
    edges = batch["cu_seq_lens"].tolist()
    out = []
    for i in range(len(examples)):
        hidden = capture(model, batch)
        where = batch["shift_labels"] != IGNORE
        owner = torch.zeros_like(where)
        owner[edges[i] : edges[i + 1]] = True
        w = (owner & where).float()[where]
        out.append(weighted_ce(hidden[where], capture.head_weight, batch["shift_labels"][where], w, chunk=3))
    return out


@pytest.mark.parametrize("attn", ["varlen", "sdpa"])
def test_packed_equals_unpacked(tiny_model: Path, attn: str) -> None:
    from still.core.train_model import load_causal_lm

    packed_model = load_causal_lm(str(tiny_model), attn)
    plain = load_causal_lm(str(tiny_model), "eager")
    examples = _examples(4, seed=1, vocab=plain.config.vocab_size)
    for ex, loss in zip(examples, _packed_losses(packed_model, examples)):
        packed_model.zero_grad()
        plain.zero_grad()
        loss.backward()
        ref = _unpacked_loss(plain, ex)
        ref.backward()
        assert abs(float(loss) - float(ref)) <= 1e-6 * max(1.0, abs(float(ref)))
        for (name, p), q in zip(packed_model.named_parameters(), plain.parameters()):
            assert p.grad is not None and q.grad is not None, name
            diff = float((p.grad - q.grad).abs().max())
            assert diff <= 1e-6 * max(1.0, float(q.grad.abs().max())), (name, diff)


# ---- losses against float64 references written out here ----------------------------------------


def _softmax(row: list[float], t: float) -> list[float]:
    m = max(x / t for x in row)
    e = [math.exp(x / t - m) for x in row]
    s = sum(e)
    return [x / s for x in e]


def _kl_ref(a: list[float], b: list[float]) -> float:
    return sum(x * math.log(x / y) for x, y in zip(a, b) if x > 0)


def _reference(kind: str, s: list[float], t: list[float], beta: float, lam: float, temp: float) -> float:
    q, p = _softmax(s, temp), _softmax(t, temp)
    if kind == "fkl":
        return _kl_ref(p, q)
    if kind == "rkl":
        return _kl_ref(q, p)
    if kind == "skew-fkl":
        return _kl_ref(p, [lam * x + (1 - lam) * y for x, y in zip(p, q)])
    if kind == "skew-rkl":
        return _kl_ref(q, [lam * y + (1 - lam) * x for x, y in zip(p, q)])
    m = [beta * x + (1 - beta) * y for x, y in zip(p, q)]
    return (beta * _kl_ref(p, m) + (1 - beta) * _kl_ref(q, m)) / (beta * (1 - beta))


@pytest.mark.parametrize("kind", ["fkl", "rkl", "skew-fkl", "skew-rkl", "jsd"])
@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_kd_losses_match_fp64_reference(kind: str, temp: float) -> None:
    gen = torch.Generator().manual_seed(3)
    s = torch.randn(6, 11, generator=gen, dtype=torch.float64) * 3
    t = torch.randn(6, 11, generator=gen, dtype=torch.float64) * 3
    got = divergence(s, t, kind, beta=0.3, skew_alpha=0.1, temperature=temp)
    for i in range(6):
        ref = _reference(kind, s[i].tolist(), t[i].tolist(), 0.3, 0.1, temp)
        assert abs(float(got[i]) - ref) <= 1e-9, (kind, i, float(got[i]), ref)


def test_jsd_endpoints_are_the_kls_and_continuous() -> None:
    gen = torch.Generator().manual_seed(4)
    s = torch.randn(5, 9, generator=gen, dtype=torch.float64)
    t = torch.randn(5, 9, generator=gen, dtype=torch.float64)
    fkl, rkl = divergence(s, t, "fkl"), divergence(s, t, "rkl")
    assert torch.equal(divergence(s, t, "jsd", beta=0.0), fkl)
    assert torch.equal(divergence(s, t, "jsd", beta=1.0), rkl)
    assert torch.allclose(divergence(s, t, "jsd", beta=1e-7), fkl, atol=1e-5)
    assert torch.allclose(divergence(s, t, "jsd", beta=1 - 1e-7), rkl, atol=1e-5)
    assert (fkl - rkl).abs().max() > 1e-3  # the two directions really differ here


def test_weighted_ce_and_chunked_kd_match_plain_autograd() -> None:
    gen = torch.Generator().manual_seed(5)
    n, hdim, vocab = 7, 4, 13
    h = torch.randn(n, hdim, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(vocab, hdim, generator=gen, dtype=torch.float64, requires_grad=True)
    th = torch.randn(n, vocab, generator=gen, dtype=torch.float64)
    y = torch.randint(0, vocab, (n,), generator=gen)
    wc = torch.rand(n, generator=gen, dtype=torch.float64)
    wk = torch.rand(n, generator=gen, dtype=torch.float64)

    def ref_loss() -> Any:
        logits = h @ w.t()
        ce = torch.nn.functional.cross_entropy(logits, y, reduction="none")
        d = torch.tensor(
            [_reference("jsd", logits[i].tolist(), th[i].tolist(), 0.4, 0.1, 2.0) for i in range(n)],
            dtype=torch.float64,
        )
        return (ce * wc).sum(), (d * wk).sum() * 4.0

    ce_ref, kd_ref = ref_loss()
    got = weighted_ce(h, w, y, wc, chunk=3)
    assert abs(float(got) - float(ce_ref)) <= 1e-9
    g_h, g_w = torch.autograd.grad(got, (h, w))
    r_h, r_w = torch.autograd.grad(
        (h @ w.t()).log_softmax(-1).gather(-1, y[:, None]).squeeze(-1).mul(-wc).sum(), (h, w)
    )
    assert torch.allclose(g_h, r_h, atol=1e-12) and torch.allclose(g_w, r_w, atol=1e-12)

    total, kd = chunked_kd(
        h,
        w,
        y,
        wc,
        wk,
        lambda a, b: ("dense", (th[a:b],)),
        kind="jsd",
        beta=0.4,
        skew_alpha=0.1,
        temperature=2.0,
        chunk=3,
    )
    assert abs(float(total) - float(ce_ref + kd_ref)) <= 1e-9 and abs(float(kd) - float(kd_ref)) <= 1e-9
    whole, _ = chunked_kd(
        h,
        w,
        y,
        wc,
        wk,
        lambda a, b: ("dense", (th[a:b],)),
        kind="jsd",
        beta=0.4,
        skew_alpha=0.1,
        temperature=2.0,
        chunk=n,
    )
    g1 = torch.autograd.grad(total, (h, w))
    g2 = torch.autograd.grad(whole, (h, w))
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(g1, g2))


def test_sparse_targets_unbiased_and_sparse_fkl_reference() -> None:
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(1, 8, generator=gen, dtype=torch.float64) * 2
    p = torch.softmax(logits, -1)[0]
    draws = 3000
    acc = torch.zeros(8, dtype=torch.float64)
    for _ in range(draws):
        ids, w = sparse_targets(logits, top_k=2, samples=3, generator=gen)
        for i, x in zip(ids[0].tolist(), w[0].tolist()):
            if i >= 0:
                acc[i] += x
    mean = acc / draws
    sigma = (p * (1 - p) / (draws * 3)).sqrt() + 1e-12
    assert ((mean - p).abs() <= 4 * sigma + 1e-9).all(), (mean, p)
    ids, w = sparse_targets(logits, top_k=3, samples=0, generator=gen)
    assert abs(float(w.sum()) - 1.0) < 1e-9  # top-k alone is renormalised
    student = torch.randn(1, 8, generator=gen, dtype=torch.float64)
    q = _softmax(student[0].tolist(), 1.0)
    ref = sum(x * math.log(x / q[i]) for i, x in zip(ids[0].tolist(), w[0].double().tolist()))
    assert abs(float(sparse_fkl(student, ids, w.double())[0]) - ref) <= 1e-9


def test_redi_loss_matches_its_formula(tiny_model: Path) -> None:
    from still.core.train_data import Pair
    from still.core.train_model import HiddenCapture, load_causal_lm

    model = load_causal_lm(str(tiny_model), "varlen")
    plain = load_causal_lm(str(tiny_model), "eager")
    pos, neg = _examples(2, seed=7, vocab=model.config.vocab_size, lengths=(11, 15))
    batch = Collator([pos, neg], redi_alpha=0.8)([Row((0, 1), pair=True)])
    assert float(batch["loss_units"]) == 1.0
    capture = HiddenCapture(model)
    hidden = capture(model, batch)
    where = batch["shift_labels"] != IGNORE
    loss = weighted_ce(hidden[where], capture.head_weight, batch["shift_labels"][where], batch["loss_weights"][where])
    lp_pos, lp_neg = -_unpacked_loss(plain, pos), -_unpacked_loss(plain, neg)
    n_pos = sum(1 for y in pos.shifted_labels() if y != IGNORE)
    n_neg = sum(1 for y in neg.shifted_labels() if y != IGNORE)
    ref = -lp_pos / n_pos + 0.8 * lp_neg / n_neg
    assert abs(float(loss) - float(ref)) <= 1e-5
    assert Pair(pos, neg).positive is pos


# ---- the Trainer: gradient accumulation, resume ---------------------------------------------------


def _sft_rows(n: int, seed: int = 0) -> list[Record]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        words = " ".join(["so"] * rng.randint(0, 12))
        response = f"<think>\n{a} + {b} = {a + b} {words}\n</think>\nThe answer is \\boxed{{{a + b}}}."
        rows.append({"id": f"q{i}", "query": f"What is {a} + {b}?", "response": response})
    return _records(rows)


def _train(
    tiny_model: Path, out: Path, rows: list[Record], callbacks: tuple[Any, ...] = (), **kw: Any
) -> dict[str, Any]:
    from still.core.train import TrainConfig, train

    base: dict[str, Any] = dict(
        model=str(tiny_model), out=str(out), lr=1e-2, warmup=0, scheduler="constant", log_steps=1000, max_grad_norm=0.0
    )
    config = TrainConfig(**{**base, **kw})
    lines: list[bytes] = []
    train(rows, config, RunStats("distill-train"), lines.append, callbacks)
    return {"lines": lines}


def _weights(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_gradient_accumulation_invariance(tiny_model: Path, tmp_path: Path) -> None:
    rows = _sft_rows(8)
    common = dict(pack=False, max_steps=1, optim="sgd")
    _train(tiny_model, tmp_path / "a", rows, batch_size=8, grad_accum=1, **common)
    _train(tiny_model, tmp_path / "b", rows, batch_size=1, grad_accum=8, **common)
    _train(tiny_model, tmp_path / "c", rows[:4], batch_size=4, grad_accum=1, **common)
    a, b, c = _weights(tmp_path / "a"), _weights(tmp_path / "b"), _weights(tmp_path / "c")
    start = _weights(tiny_model)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, worst
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-4  # the step did move the weights
    assert max(float((a[k] - c[k]).abs().max()) for k in a) > 1e-6  # and other data gives another step


class _Kill:
    """A TrainerCallback that dies like a killed job right after a given step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_resume_mid_epoch_equals_uninterrupted(tiny_model: Path, tmp_path: Path) -> None:
    rows = _sft_rows(12, seed=2)
    common = dict(pack=False, max_steps=8, save_steps=3, batch_size=2, lr=1e-3, scheduler="cosine", warmup=2, epochs=2)
    _train(tiny_model, tmp_path / "full", rows, checkpoint_dir=str(tmp_path / "ck-full"), **common)
    with pytest.raises(KeyboardInterrupt):
        _train(tiny_model, tmp_path / "part", rows, (_Kill(5),), checkpoint_dir=str(tmp_path / "ck"), **common)
    assert not (tmp_path / "part").exists()  # nothing half-written
    assert (tmp_path / "ck" / "checkpoint-3").is_dir()
    _train(tiny_model, tmp_path / "part", rows, checkpoint_dir=str(tmp_path / "ck"), resume=True, **common)
    full, part = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    worst = max(float((full[k] - part[k]).abs().max()) for k in full)
    assert worst == 0.0, worst


def test_gradient_checkpointing_same_step_and_bf16_autocast_on_cpu(tiny_model: Path, tmp_path: Path) -> None:
    rows = _sft_rows(6, seed=3)
    common = dict(max_steps=2, optim="sgd", log_steps=1)
    plain = _train(tiny_model, tmp_path / "plain", rows, **common)
    _train(tiny_model, tmp_path / "ckpt", rows, gradient_checkpointing=True, **common)
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "ckpt")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6  # recomputed activations, same update
    bf16 = _train(tiny_model, tmp_path / "bf16", rows, precision="bf16", **common)
    loss32, loss16 = (json.loads(r["lines"][0])["loss"] for r in (plain, bf16))
    assert loss16 != loss32 and abs(loss16 - loss32) < 1e-2 * loss32  # autocast ran, and stayed close


def test_kd_with_teacher_and_redi_train(tiny_model: Path, tmp_path: Path) -> None:
    from tiny_model import build_tiny_model

    teacher = build_tiny_model(tmp_path / "teacher", seed=1)
    rows = _sft_rows(6)
    _train(tiny_model, tmp_path / "kd", rows, objective="kd", teacher=str(teacher), kd_loss="skew-rkl", max_steps=2)
    assert (tmp_path / "kd" / "model.safetensors").exists()
    redi = []
    for r in rows:
        good = dict(r.data, verify={"verdict": "correct"})
        bad = dict(r.data, response=r.data["response"].replace("boxed{", "boxed{1"), verify={"verdict": "wrong"})
        redi += [good, bad, dict(r.data, verify={"verdict": "truncated"})]
    stats = RunStats("distill-train")
    stats.read = len(redi)  # what the JSONL reader counts in a real run
    from still.core.train import TrainConfig, train

    config = TrainConfig(model=str(tiny_model), out=str(tmp_path / "redi"), objective="redi", max_steps=2, lr=1e-6)
    train(_records(redi), config, stats, lambda b: None)
    assert stats.extra["rows"] == 6 and stats.dropped["verdict truncated"] == 6
    stats.check_balance()


# ---- the command ------------------------------------------------------------------------------------


def _write(path: Path, records: list[Record]) -> Path:
    path.write_text("".join(json.dumps(r.data) + "\n" for r in records))
    return path


def test_cli_sft_writes_model_and_metrics(tiny_model: Path, tmp_path: Path) -> None:
    data = _write(tmp_path / "d.jsonl", _sft_rows(16))
    out = tmp_path / "out"
    res = run_still(
        [
            "distill-train",
            "--model",
            str(tiny_model),
            "--out",
            str(out),
            "--max-steps",
            "3",
            "--log-steps",
            "1",
            "--lr",
            "1e-3",
            "--max-length",
            "64",
            "--truncate",
            "truncate",
            str(data),
        ]
    )
    lines = [json.loads(x) for x in res.lines()]
    assert [x["step"] for x in lines] == [1, 2, 3]
    assert set(lines[0]) == {"step", "loss", "lr", "tokens_per_s", "supervised_tokens", "epoch"}
    assert lines[2]["supervised_tokens"] > lines[0]["supervised_tokens"] > 0
    assert "read 16, written 16" in res.stderr
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).chat_template


def test_zero_supervised_row_is_an_error_with_its_line(tok: Any) -> None:
    from still.core.errors import BadInput
    from still.core.fields import Fields

    template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    rows = _records([{"query": "a", "response": "b"}, {"query": "c", "response": ""}])
    examples = encode_records(rows, ChatMasker(tok, template), Fields(), LengthPolicy(64), RunStats("t"))
    assert next(examples).supervised > 0
    with pytest.raises(BadInput, match=r"^d.jsonl:2: no supervised tokens"):
        next(examples)


def test_dump_teacher_logits_then_kd_from_cache(tiny_model: Path, tmp_path: Path) -> None:
    from still.core.errors import UsageError
    from still.core.train import TrainConfig, train

    cache = tmp_path / "t.safetensors"
    stats = RunStats("distill-train")
    dump = TrainConfig(model=str(tiny_model), out=None, dump_path=str(cache), top_k=4, samples=8)
    train(_sft_rows(5), dump, stats, lambda b: None)
    from safetensors.torch import load_file

    t = load_file(str(cache))
    assert t["ids"].shape[1] == 12 and t["weights"].dtype == torch.float16
    assert int(t["offsets"][-1]) == t["ids"].shape[0] == stats.extra["positions"] > 0
    _train(tiny_model, tmp_path / "kd", _sft_rows(5), objective="kd", teacher_logits=str(cache), max_steps=1)
    assert (tmp_path / "kd" / "model.safetensors").exists()
    with pytest.raises(UsageError, match="does not match the dumped tokens"):
        _train(tiny_model, tmp_path / "kd2", _sft_rows(5, seed=9), objective="kd", teacher_logits=str(cache))


def test_lora_trains_adapters_and_writes_a_merged_model(tiny_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    _train(tiny_model, tmp_path / "lora", _sft_rows(4), lora_r=4, lora_alpha=8, lora_dropout=0.0, max_steps=2)
    merged, start = _weights(tmp_path / "lora"), _weights(tiny_model)
    assert set(merged) == set(start)  # a plain model: no adapter tensors left
    moved = [k for k in start if not torch.equal(merged[k], start[k])]
    assert moved and all("proj" in k for k in moved)  # adapted linears changed; embeddings and head did not
