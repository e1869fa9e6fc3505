"""Full fine-tuning of the target blocks (TLI's baseline beside LoRA): train, save, reload, reproduce exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tli_core.config import TLIConfig
from tli_core.embeddings import embed
from tli_core.errors import TLIError
from tli_core.fullft import FullBlocks
from tli_core.models import ModelSpec, load_model
from tli_core.trained import trained_model
from tli_core.worker import evaluate_run


@pytest.fixture(scope="module")
def full_run(tiny_model_dir, tmp_path_factory):
    from tests.conftest import trained_tiny_run

    return trained_tiny_run(tiny_model_dir, tmp_path_factory.mktemp("fullft"), method="full", target_layers=[2],
                            learning_rate=1e-3, protocols=["studio", "paper-code"])


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_blocks_1_and_2_train_and_are_saved_alone(full_run, tiny_model_dir):
    assert full_run.has_full_ft() and not full_run.has_adapter()
    saved = load_file(str(full_run.full_ft_dir / "blocks.safetensors"))
    assert {k.split(".")[1] for k in saved} == {"0", "1"}  # blocks 1 and 2 = layers.0 and layers.1, nothing else
    assert all(v.dtype == torch.float32 for v in saved.values())
    fresh = load_model(ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu")).model
    original = fresh.model.layers[0].state_dict()
    moved = [k for k, v in original.items() if not torch.equal(v, saved[f"layers.0.{k}"])]
    assert {"self_attn.q_proj.weight", "mlp.down_proj.weight"} <= set(moved)  # attention and MLP weights learned
    metrics = full_run.metrics()
    assert metrics["loss"].iloc[-3:].mean() < metrics["loss"].iloc[:3].mean()
    studio = full_run.summary("studio")
    assert studio["weights"] == "full" and "fine-tuned blocks" in studio["protocol_description"]


def test_reloading_the_saved_blocks_reproduces_after_exactly(full_run):
    during = {p: full_run.table("pairs_layers", p) for p in ("studio", "paper-code")}
    evaluate_run(full_run, protocols=["studio", "paper-code"])
    for protocol, table in during.items():
        again = full_run.table("pairs_layers", protocol)
        assert len(again) == len(table)
        np.testing.assert_array_equal(again["after"].to_numpy(), table["after"].to_numpy())
        np.testing.assert_array_equal(again["before"].to_numpy(), table["before"].to_numpy())
    assert full_run.summary("paper-code")["merged"] is False  # no adapter to merge: said, not pretended


def test_the_base_model_is_exactly_itself_after_the_blocks_leave(full_run, tiny):
    before = weights(tiny.model)
    words = ["maji", "water", "kitabu", "book"]
    base = embed(tiny.model, tiny.tokenizer, words, layers=[2]).at(2)
    with trained_model(tiny.model, full_run.full_ft_dir) as tuned:
        tuned_vectors = embed(tuned, tiny.tokenizer, words, layers=[2]).at(2)
    assert not torch.allclose(base, tuned_vectors)
    after = weights(tiny.model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(not p.requires_grad for p in tiny.model.parameters())
    np.testing.assert_array_equal(embed(tiny.model, tiny.tokenizer, words, layers=[2]).at(2).numpy(), base.numpy())


@pytest.mark.parametrize("compute", ["float32", "bfloat16"])
def test_nf4_blocks_dequantize_train_reload_and_restore(tiny_model_dir, tmp_path, compute):
    lm = load_model(ModelSpec(model=str(tiny_model_dir), quantization="nf4", device="cpu", compute_dtype=compute))
    model = lm.model
    ids = lm.tokenizer(["maji water"], return_tensors="pt")["input_ids"]

    def hidden():
        with torch.no_grad():
            return model(ids, output_hidden_states=True).hidden_states[2].float()

    base = hidden()
    blocks = FullBlocks(model, [1, 2])
    kinds = {type(m).__name__ for m in model.model.layers[0].modules()}
    assert "Linear4bit" not in kinds and "Linear" in kinds
    # the dequantized float32 block computes what the 4-bit one did, up to the compute dtype's rounding
    torch.testing.assert_close(hidden(), base, atol=2e-2 if compute == "float32" else 6e-2, rtol=0)
    assert all(p.dtype == torch.float32 and p.requires_grad for p in blocks.parameters())
    optimizer = torch.optim.AdamW(blocks.parameters(), lr=1e-2)
    for _ in range(3):
        out = model(ids, output_hidden_states=True).hidden_states[2]
        loss = out.pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    trained = hidden()
    assert not torch.allclose(trained, base)
    blocks.write(tmp_path / "ft")
    blocks.close()
    assert "Linear4bit" in {type(m).__name__ for m in model.model.layers[0].modules()}
    torch.testing.assert_close(hidden(), base, atol=0, rtol=0)  # the quantized blocks back, exactly
    again = FullBlocks(model, [1, 2])
    again.load(tmp_path / "ft")
    torch.testing.assert_close(hidden(), trained, atol=0, rtol=0)  # the saved blocks reproduce training's
    again.close()
    with pytest.raises(TLIError, match="holds blocks"):
        other = FullBlocks(model, [1])
        try:
            other.load(tmp_path / "ft")
        finally:
            other.close()


def test_the_method_is_checked_and_named(tiny_model_dir, pair_files):
    from tli_core.config import resolve

    config = TLIConfig(model=ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"),
                       trained_pairs=str(pair_files[0]), control_pairs=str(pair_files[1]), method="full")
    lm = load_model(config.model)
    _, warnings = resolve(config, lm.facts.shape())
    assert any("full fine-tuning" in w and "blocks 1..2" in w for w in warnings)
    with pytest.raises(TLIError, match="unknown training method"):
        resolve(dataclasses.replace(config, method="qlora"), lm.facts.shape())


def test_fine_tuned_blocks_of_a_bf16_model_stay_float32_in_a_float32_analysis(tiny_model_dir):
    """The 'after' side must use the same arithmetic as the 'before' side: the trained float32 blocks' output was
    rounded to the model's bf16 even while the float32 analysis ran everything else in float32."""
    from tli_core.precision import analysis_precision

    bf16 = load_model(ModelSpec(model=str(tiny_model_dir), quantization="bf16", device="cpu")).model
    blocks = FullBlocks(bf16, [1, 2])
    torch.manual_seed(0)
    with torch.no_grad():
        for p in blocks.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # what training would have moved
    state = blocks.state_dict()
    words = ["maji", "kitabu", "habari za asubuhi", "water", "book", "good morning"]
    got = embed(bf16, _tok(tiny_model_dir), words, precision="float32").vectors
    blocks.close()
    # an exact float32 reference: the bf16 model's own weights cast up, the trained blocks' float32 weights in
    ref_model = load_model(ModelSpec(model=str(tiny_model_dir), quantization="bf16", device="cpu")).model
    ref_model.float()
    for k in (0, 1):  # blocks 1 and 2
        ref_model.model.layers[k].load_state_dict({n[len(f"layers.{k}."):]: v for n, v in state.items()
                                                   if n.startswith(f"layers.{k}.")}, strict=True)
    with analysis_precision(ref_model, "float32"):
        want = embed(ref_model, _tok(tiny_model_dir), words, precision="float32").vectors
    assert (got - want).abs().max().item() < 1e-5


def _tok(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
