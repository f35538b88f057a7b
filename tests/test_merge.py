"""still merge: hand-computed averages, every method against mergekit 0.1.5, refusals, specs, shards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="merge tests need the 'models' extra: pip install 'still[models]'")
pytest.importorskip("transformers", reason="merge tests need the 'models' extra: pip install 'still[models]'")

import mergekit_env  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tiny_model import build_tiny_model  # noqa: E402

from still.core.merge import MergePlan, MergeRefused, merge  # noqa: E402
from still.core.merge_spec import run_spec  # noqa: E402
from still.core.safetensors_io import ModelFileError  # noqa: E402

VARIANTS = {"tied-fp32": {"tied": True, "dtype": "float32"}, "untied-bf16": {"tied": False, "dtype": "bfloat16"}}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Per variant, three models sharing one tokenizer (tokenizer_seed 0) with different weights."""
    root = tmp_path_factory.mktemp("merge-models")
    return {
        name: [build_tiny_model(root / f"{name}-{s}", seed=s, **kw) for s in (1, 2, 3)] for name, kw in VARIANTS.items()
    }


def weights(path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_linear_equals_hand_computed_average(models: dict[str, list[Path]], tmp_path: Path) -> None:
    for variant, (a, b, c) in models.items():
        manifest = merge(MergePlan("linear", [a, b, c], weights=(2.0, 1.0, 0.5)), tmp_path / variant)
        got, wa, wb, wc = (weights(p) for p in (tmp_path / variant, a, b, c))
        assert set(got) == set(wa)
        for name, t in got.items():
            # fp32 accumulation, one rounding to the model dtype at the end
            acc = wa[name].float() * 2.0 + wb[name].float() * 1.0 + wc[name].float() * 0.5
            expected = (acc / torch.tensor(3.5)).to(wa[name].dtype)
            assert torch.equal(t, expected), (variant, name)
        assert manifest["parameters"] == {"weight": [2.0, 1.0, 0.5], "normalize": True}
        assert [i["role"] for i in manifest["inputs"]] == ["model"] * 3


def test_output_loads_in_transformers_and_keeps_tying(models: dict[str, list[Path]], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for variant, (a, b, _) in models.items():
        out = tmp_path / variant
        merge(MergePlan("ties", [b], base=a, densities=(0.5,)), out)
        model = AutoModelForCausalLM.from_pretrained(out)
        tied = VARIANTS[variant]["tied"]
        assert ("lm_head.weight" in weights(out)) is (not tied)
        assert model.config.tie_word_embeddings is tied
        assert str(model.dtype) == f"torch.{VARIANTS[variant]['dtype']}"
        ids = AutoTokenizer.from_pretrained(out)("What is 1 + 2?", return_tensors="pt").input_ids
        assert model(ids).logits.shape[-1] == model.config.vocab_size
        assert json.loads((out / "generation_config.json").read_text()) == json.loads(
            (a / "generation_config.json").read_text()
        )


# --- against mergekit -------------------------------------------------------------------------------

CASES: dict[str, dict[str, Any]] = {
    # method: (base?, our MergePlan kwargs, mergekit global params, mergekit per-model params)
    "linear": {"base": False, "plan": {"weights": (2.0, 1.0, 0.5)}, "mk": {}, "per": {"weight": [2.0, 1.0, 0.5]}},
    "task_arithmetic": {
        "base": True, "plan": {"weights": (0.7, 0.3), "lam": 0.8},
        "mk": {"lambda": 0.8}, "per": {"weight": [0.7, 0.3]},
    },
    "ties": {
        "base": True, "plan": {"weights": (1.0, 0.5), "densities": (0.5, 0.3)},
        "mk": {}, "per": {"weight": [1.0, 0.5], "density": [0.5, 0.3]},
    },
    "dare_linear": {
        "base": True, "plan": {"weights": (0.6, 0.4), "densities": (0.6, 0.6)},
        "mk": {}, "per": {"weight": [0.6, 0.4], "density": [0.6, 0.6]},
    },
    "dare_ties": {
        "base": True, "plan": {"weights": (1.0, 1.0), "densities": (0.5, 0.7)},
        "mk": {}, "per": {"weight": [1.0, 1.0], "density": [0.5, 0.7]},
    },
    "slerp": {"base": True, "n": 1, "plan": {"t": 0.3}, "mk": {"t": 0.3}, "per": {}},
    "model_stock": {"base": True, "plan": {}, "mk": {}, "per": {}},
    "arcee_fusion": {"base": True, "n": 1, "plan": {}, "mk": {}, "per": {}},
}  # fmt: skip
SEED = 0


@pytest.fixture(scope="module")
def mergekit_outputs(models: dict[str, list[Path]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every case merged by mergekit (one process for all: its import takes seconds)."""
    _, why = mergekit_env.ensure()
    if why:
        pytest.skip(f"mergekit {mergekit_env.VERSION} not available: {why}")
    root = tmp_path_factory.mktemp("mergekit-out")
    jobs, outs = [], {}
    for variant, paths in models.items():
        for method, case in CASES.items():
            base, rest = _split(paths, case)
            cfg = mergekit_env.config(method, base, rest, case["mk"], case["per"])
            outs[f"{variant}/{method}"] = root / f"{variant}-{method}"
            jobs.append({"config": cfg, "out": str(outs[f"{variant}/{method}"]), "seed": SEED})
    mergekit_env.run_merges(jobs)
    return outs


def _split(paths: list[Path], case: dict[str, Any]) -> tuple[Path | None, list[Path]]:
    if not case["base"]:
        return None, list(paths)
    return paths[0], list(paths[1 : 1 + case.get("n", 2)])


def _ulps(a: Any, b: Any) -> int:
    """Largest distance in units in the last place between two same-dtype float tensors."""
    int_dtype = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[a.dtype]
    ia, ib = a.view(int_dtype).long(), b.view(int_dtype).long()
    # map sign-magnitude to a monotonic integer line
    bits = 8 * a.element_size()
    ia = torch.where(ia < 0, -(ia & ((1 << (bits - 1)) - 1)), ia)
    ib = torch.where(ib < 0, -(ib & ((1 << (bits - 1)) - 1)), ib)
    return int((ia - ib).abs().max())


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("method", list(CASES))
def test_against_mergekit(
    method: str, variant: str, models: dict[str, list[Path]], mergekit_outputs: dict[str, Path], tmp_path: Path
) -> None:
    case = CASES[method]
    base, rest = _split(models[variant], case)
    merge(MergePlan(method, rest, base=base, seed=SEED, **case["plan"]), tmp_path / "still")
    ours, theirs = weights(tmp_path / "still"), weights(mergekit_outputs[f"{variant}/{method}"])
    theirs.pop("lm_head.weight", None) if "lm_head.weight" not in ours else None
    assert set(ours) == set(theirs)
    for name in sorted(ours):
        a, b = ours[name], theirs[name]
        assert a.dtype == b.dtype and a.shape == b.shape, name
        if method == "slerp":
            assert _ulps(a, b) <= 1, name
        else:
            assert torch.equal(a, b), f"{method} {variant} {name}: max diff {(a.float() - b.float()).abs().max()}"


def test_dare_keeps_density_and_l1_norm(models: dict[str, list[Path]], tmp_path: Path) -> None:
    """Statistical check of DARE's draws: kept fraction near the density, task-vector L1 norm kept."""
    base, other = models["tied-fp32"][:2]
    merge(MergePlan("dare_linear", [other], base=base, densities=(0.3,), seed=5), tmp_path / "out")
    got, wb, wo = weights(tmp_path / "out"), weights(base), weights(other)
    name = "model.embed_tokens.weight"
    delta, tau = got[name] - wb[name], wo[name] - wb[name]
    kept = (delta != 0).float().mean().item()
    assert abs(kept - 0.3) < 0.01, kept  # 32k draws: sd ≈ 0.0025
    assert abs(delta.abs().sum().item() / tau.abs().sum().item() - 1) < 1e-4
    # another seed draws another mask
    merge(MergePlan("dare_linear", [other], base=base, densities=(0.3,), seed=6), tmp_path / "out6")
    assert not torch.equal(weights(tmp_path / "out6")[name], got[name])


# --- TinyR1's two-stage spec ------------------------------------------------------------------------


def test_tinyr1_two_stage_spec(models: dict[str, list[Path]], tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    math, science, code = models["untied-bf16"]
    spec = tmp_path / "tinyr1.yaml"
    spec.write_text(
        f"seed: 0\ndtype: bfloat16\nout_dtype: bfloat16\n"
        f"models: {{math: {math}, science: {science}, code: {code}}}\n"
        "stages:\n"
        "  - {name: math_science, method: arcee_fusion, base: science, models: [math]}\n"
        "  - {method: arcee_fusion, base: code, models: [math_science]}\n"
    )
    manifest = run_spec(spec, tmp_path / "out")
    assert [s["stage"] for s in manifest["stages"]] == ["math_science"]
    assert manifest["inputs"][0]["path"] == str(code)
    assert not list(tmp_path.glob(".out.still-*"))  # the intermediate stage is gone
    AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    # the same as two single merges
    mid = merge(MergePlan("arcee_fusion", [math], base=science, dtype="bfloat16", out_dtype="bfloat16"), tmp_path / "m")
    merge(
        MergePlan("arcee_fusion", [Path(mid["out"])], base=code, dtype="bfloat16", out_dtype="bfloat16"), tmp_path / "f"
    )
    assert (tmp_path / "f" / "model.safetensors").read_bytes() == (tmp_path / "out" / "model.safetensors").read_bytes()


# --- refusals: a clear message, exit 3, nothing written -----------------------------------------------


def _refused(still: Any, args: list[str], out: Path, message: str) -> None:
    res = still(args + ["-o", str(out)], code=3)
    assert message in res.stderr, res.stderr
    assert res.stdout == b""
    assert not out.exists() or message.endswith("--force to replace it")
    assert not list(out.parent.glob(f".{out.name}.still-*"))


def test_refusals(models: dict[str, list[Path]], tmp_path: Path, still: Any) -> None:
    a, b, _ = (Path(p) for p in models["tied-fp32"])
    out = tmp_path / "out"
    _refused(still, ["merge", "--method", "linear", str(a), str(a)], out, "given twice")
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    _refused(still, ["merge", "--method", "linear", str(a), str(copy)], out, "same weights as")
    # another vocabulary size
    big = build_tiny_model(tmp_path / "big", seed=4, tied=True, vocab_size=600)
    _refused(still, ["merge", "--method", "linear", str(a), str(big)], out, "vocabulary size mismatch")
    # same size, other ids: the tokenizer trained on another corpus
    other_tok = build_tiny_model(tmp_path / "other-tok", seed=4, tied=True, tokenizer_seed=9)
    _refused(still, ["merge", "--method", "linear", str(a), str(other_tok)], out, "tokenizers differ")
    res = still(["merge", "--method", "linear", "--tokenizer-policy", "base", str(a), str(other_tok), "-o", str(out)])
    assert json.loads(res.stdout)["tokenizer_policy"] == "base"
    # an existing --out
    _refused(still, ["merge", "--method", "linear", str(a), str(b)], out, "--force to replace it")
    still(["merge", "-q", "--method", "linear", "--force", str(a), str(b), "-o", str(out)])
    out2 = tmp_path / "out2"
    # tied against untied, other architecture (more layers), shape mismatch (wider)
    untied = models["untied-bf16"][0]
    _refused(still, ["merge", "--method", "linear", str(a), str(untied)], out2, "ties it to the embedding")
    deeper = build_tiny_model(tmp_path / "deep", seed=4, tied=True, layers=3)
    _refused(still, ["merge", "--method", "linear", str(a), str(deeper)], out2, "tensor names differ")
    wide = build_tiny_model(tmp_path / "wide", seed=4, tied=True, hidden=128, heads=4)
    _refused(still, ["merge", "--method", "linear", str(a), str(wide)], out2, "shape mismatch")
    # missing and corrupt shards
    broken = tmp_path / "broken"
    shutil.copytree(b, broken)
    with open(broken / "model.safetensors", "r+b") as fh:
        fh.truncate((broken / "model.safetensors").stat().st_size - 64)  # header intact, data short
    _refused(still, ["merge", "--method", "linear", str(a), str(broken)], out2, "truncated or corrupt")
    (broken / "model.safetensors").unlink()
    _refused(still, ["merge", "--method", "linear", str(a), str(broken)], out2, "no model.safetensors")
    (broken / "model.safetensors.index.json").write_text('{"weight_map": {"x": "model-00001-of-00002.safetensors"}}')
    _refused(still, ["merge", "--method", "linear", str(a), str(broken)], out2, "shard missing")


def test_untied_model_into_tied_base_uses_embedding_for_lm_head(models: dict[str, list[Path]], tmp_path: Path) -> None:
    tied = models["tied-fp32"][0]
    untied = build_tiny_model(tmp_path / "untied32", seed=7, tied=False)
    merge(MergePlan("linear", [untied, tied]), tmp_path / "out")
    got, wu, wt = weights(tmp_path / "out"), weights(untied), weights(tied)
    expected = ((wu["lm_head.weight"] + wt["model.embed_tokens.weight"]) / 2).float()
    assert torch.allclose(got["lm_head.weight"], expected)


def test_usage_errors(models: dict[str, list[Path]], tmp_path: Path, still: Any) -> None:
    a, b, c = (str(p) for p in models["tied-fp32"])
    out = str(tmp_path / "o")
    assert "needs --base" in still(["merge", "--method", "ties", a, b, "-o", out], code=2).stderr
    assert "once per model" in still(["merge", "--method", "linear", "--weight", "1", "--weight", "2",
                                      "--weight", "3", "--weight", "4", a, b, c, "-o", out], code=2).stderr  # fmt: skip
    assert "besides the base" in still(["merge", "--method", "slerp", "--base", a, b, c, "-o", out], code=2).stderr


# --- sharded input and output -----------------------------------------------------------------------


def test_sharded_input_and_output(models: dict[str, list[Path]], tmp_path: Path, still: Any) -> None:
    a, b, _ = models["untied-bf16"]
    sharded = tmp_path / "sharded"
    shutil.copytree(a, sharded)
    tensors = load_file(sharded / "model.safetensors")
    (sharded / "model.safetensors").unlink()
    names = sorted(tensors)
    parts = [names[: len(names) // 3], names[len(names) // 3 : 2 * len(names) // 3], names[2 * len(names) // 3 :]]
    weight_map = {}
    for i, part in enumerate(parts, 1):
        shard = f"model-{i:05d}-of-00003.safetensors"
        save_file({n: tensors[n] for n in part}, str(sharded / shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    res = still(
        ["merge", "--method", "linear", "--max-shard-size", "100KB", str(sharded), str(b), "-o", str(tmp_path / "o")]
    )
    manifest = json.loads(res.stdout)
    assert len(res.lines()) == 1 and len(manifest["shards"]) > 1
    out = tmp_path / "o"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(tensors)
    import hashlib

    for shard in manifest["shards"]:
        assert hashlib.sha256((out / shard["name"]).read_bytes()).hexdigest() == shard["sha256"]
        assert shard["bytes"] <= 100_000 + 70_000  # a shard closes before the tensor that would overflow it
    # same result as from the unsharded copy
    merge(MergePlan("linear", [a, b]), tmp_path / "plain")
    ours, plain = weights(out), weights(tmp_path / "plain")
    assert all(torch.equal(ours[n], plain[n]) for n in plain)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out)


def test_missing_indexed_tensor_is_refused(models: dict[str, list[Path]], tmp_path: Path) -> None:
    a = models["tied-fp32"][0]
    d = tmp_path / "m"
    shutil.copytree(a, d)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"ghost": "model.safetensors"}}))
    with pytest.raises(ModelFileError, match="index says|not in any shard"):
        merge(MergePlan("linear", [a, d]), tmp_path / "o")
    with pytest.raises(MergeRefused):
        merge(MergePlan("linear", [a, a]), tmp_path / "o")


def test_interrupted_run_leaves_nothing_at_out(models: dict[str, list[Path]], tmp_path: Path) -> None:
    a, b, _ = models["tied-fp32"]

    def interrupt(done: int, total: int) -> None:
        if done == total // 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        merge(MergePlan("linear", [a, b]), tmp_path / "out", progress=interrupt)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_arcee_fusion_sampled_quantiles_match_mergekit(tmp_path: Path) -> None:
    """Tensors over 10⁶ elements: the quantiles come from randint samples, matched draw for draw."""
    _, why = mergekit_env.ensure()
    if why:
        pytest.skip(f"mergekit {mergekit_env.VERSION} not available: {why}")
    kw: dict[str, Any] = {"layers": 1, "hidden": 2048, "heads": 2, "tied": True, "dtype": "bfloat16"}
    base, other = (build_tiny_model(tmp_path / f"m{s}", seed=s, **kw) for s in (1, 2))
    cfg = mergekit_env.config("arcee_fusion", base, [other], {}, {})
    mergekit_env.run_merges([{"config": cfg, "out": str(tmp_path / "mk"), "seed": 3}])
    merge(MergePlan("arcee_fusion", [other], base=base, seed=3), tmp_path / "still")
    ours, theirs = weights(tmp_path / "still"), weights(tmp_path / "mk")
    assert ours["model.embed_tokens.weight"].numel() > 1_000_000
    assert all(torch.equal(ours[n], theirs[n]) for n in ours)
    merge(MergePlan("arcee_fusion", [other], base=base, seed=4), tmp_path / "seed4")
    assert not all(torch.equal(ours[n], t) for n, t in weights(tmp_path / "seed4").items())


def test_chunked_combine_matches_mergekit(
    models: dict[str, list[Path]], mergekit_outputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task-vector methods combine in chunks; with chunks far smaller than a tensor nothing changes."""
    from still.core import merge_methods

    monkeypatch.setattr(merge_methods, "COMBINE_CHUNK", 1000)
    for variant in VARIANTS:
        for method in ("ties", "task_arithmetic", "dare_ties"):
            case = CASES[method]
            base, rest = _split(models[variant], case)
            out = tmp_path / f"{variant}-{method}"
            merge(MergePlan(method, rest, base=base, seed=SEED, **case["plan"]), out)
            ours, theirs = weights(out), weights(mergekit_outputs[f"{variant}/{method}"])
            assert all(torch.equal(ours[n], theirs[n]) for n in ours), (variant, method)


def test_json_spec_through_the_cli(models: dict[str, list[Path]], tmp_path: Path, still: Any) -> None:
    a, b, c = models["tied-fp32"]
    spec = tmp_path / "spec.json"
    stages = [
        {"name": "ab", "method": "linear", "models": [str(a), str(b)], "weight": [1, 3]},
        {"method": "task_arithmetic", "base": str(c), "models": ["ab"], "lambda": 0.5},
    ]
    spec.write_text(json.dumps({"seed": 1, "stages": stages}))
    res = still(["merge", "--spec", str(spec), "--seed", "5", "-o", str(tmp_path / "out")])
    (line,) = res.lines()
    manifest = json.loads(line)
    assert manifest["method"] == "task_arithmetic" and manifest["stages"][0]["parameters"]["weight"] == [1.0, 3.0]
    assert manifest["seed"] == 5 and manifest["stages"][0]["seed"] == 5  # --seed overrides the spec's
    res = still(["merge", "--spec", str(spec), "--density", "0.5", "-o", str(tmp_path / "o3")], code=2)
    assert "give no MODELS" in res.stderr
    spec.write_text(json.dumps({"stages": [{"method": "linear", "models": [str(a)], "wieght": 1}]}))
    res = still(["merge", "--spec", str(spec), "-o", str(tmp_path / "out2")], code=3)
    assert "unknown stage key 'wieght'" in res.stderr and not (tmp_path / "out2").exists()
