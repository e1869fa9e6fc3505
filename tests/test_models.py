"""Loading: facts, NF4 really quantized, and the errors users can cause."""

import time

import pytest
import torch

from tli_core.errors import TLIError
from tli_core.layers import layer_name, paper_eval_layer, resolve_layer
from tli_core.models import ModelSpec, count_quantized, load_model


def test_fp32_facts(tiny):
    f = tiny.facts
    assert (f.num_layers, f.hidden_size, f.num_hidden_states) == (4, 64, 5)
    assert f.architecture == "LlamaForCausalLM" and f.model_type == "llama"
    assert f.adds_bos and f.bos_token == "<s>"
    assert f.pad_token == "</s>" and "EOS" in f.pad_token_choice  # no pad token: EOS, as the paper
    assert f.source == "local" and f.quantization == "fp32" and f.quantized_linear_layers == 0
    assert f.param_dtypes == {"float32": sum(p.numel() for p in tiny.model.parameters())}
    assert f.lora_targets == ["q_proj", "v_proj"]
    assert not any(p.requires_grad for p in tiny.model.parameters())
    assert not tiny.model.training


def test_nf4_holds_bitsandbytes_4bit_layers(tiny_model_dir):
    import bitsandbytes as bnb

    lm = load_model(ModelSpec(model=str(tiny_model_dir), quantization="nf4", device="cpu"))
    q = lm.model.model.layers[0].self_attn.q_proj
    assert isinstance(q, bnb.nn.Linear4bit)
    assert q.weight.quant_state.quant_type == "nf4"
    assert lm.model.model.layers[0].self_attn.q_proj.compute_dtype == torch.bfloat16
    assert count_quantized(lm.model) == 4 * 7  # q, k, v, o, gate, up, down in each of 4 blocks
    assert lm.facts.quantized_linear_layers == 28 and "uint8" in lm.facts.param_dtypes


def test_nf4_cpu_weights_survive_state_dict_and_train(tiny_model_dir):
    """Regression: bitsandbytes' CPU weight repacking broke gradients and state_dict (see models.py)."""
    from tli_core.config import TLIConfig, resolve
    from tli_core.embeddings import embed, tokenise
    from tli_core.training import attach_lora, step_loss

    lm = load_model(ModelSpec(model=str(tiny_model_dir), quantization="nf4", device="cpu"))
    words = ["maji", "water", "paka", "cat"]
    before = embed(lm.model, lm.tokenizer, words).vectors
    lm.model.state_dict()  # PEFT calls this when it saves an adapter
    torch.testing.assert_close(embed(lm.model, lm.tokenizer, words).vectors, before)
    cfg = TLIConfig(target_layers=[2], batch_size=2)
    r, _ = resolve(cfg, lm.facts.shape())
    peft_model = attach_lora(lm.model, cfg, r)
    peft_model.train()
    tok_s, tok_t = tokenise(lm.tokenizer, words[0::2]), tokenise(lm.tokenizer, words[1::2])
    loss, _ = step_loss(peft_model, tok_s, tok_t, [0, 1], lm.tokenizer.pad_token_id, cfg, r.target_layers, None,
                        "cpu")
    loss.backward()
    grads = [p.grad.abs().sum().item() for n, p in peft_model.named_parameters() if "lora_B" in n and ".0." in n]
    assert grads and all(g > 0 for g in grads)


def test_layer_numbering():
    assert [layer_name(k, 30) for k in (0, 1, 29, 30)] == ["embeddings", "block 1", "block 29",
                                                            "block 30 + final norm"]
    assert resolve_layer(-1, 30) == 30 and resolve_layer(0, 30) == 0
    assert paper_eval_layer(32) == 31  # the paper's "layer 31" on Llama-3-8B
    with pytest.raises(TLIError, match="outside this model's layers 0..30"):
        resolve_layer(31, 30)
    with pytest.raises(TLIError, match="whole number"):
        resolve_layer("two", 30)


def test_unknown_hub_id_fails_fast_and_clearly():
    start = time.perf_counter()
    with pytest.raises(TLIError, match="not in the Hugging Face cache"):
        load_model(ModelSpec(model="nobody/no-such-model-xyz", device="cpu"))
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("name, message", [
    ("/definitely/not/here", "no such model directory"),
    ("not a valid id!", "neither 'demo', a local directory, nor a valid hub id"),
])
def test_bad_model_names(name, message):
    with pytest.raises(TLIError, match=message):
        load_model(ModelSpec(model=name, device="cpu"))


def test_directory_without_config(tmp_path):
    with pytest.raises(TLIError, match="no config.json"):
        load_model(ModelSpec(model=str(tmp_path), device="cpu"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu():
    with pytest.raises(TLIError, match="no CUDA GPU"):
        load_model(ModelSpec(model="demo", device="cuda"))


def test_bad_spec_values():
    with pytest.raises(TLIError, match="quantization"):
        ModelSpec(quantization="nf3")
    with pytest.raises(TLIError, match="device"):
        ModelSpec(device="tpu")
    with pytest.raises(TLIError, match="float16 compute is not supported on CPU"):
        load_model(ModelSpec(model="demo", device="cpu", compute_dtype="float16"))
    with pytest.raises(TLIError, match="unknown model setting"):
        ModelSpec.from_dict({"model": "demo", "quant": "nf4"})
