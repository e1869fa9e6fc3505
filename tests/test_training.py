"""The TLI method: config defaults, validation, losses, early exit, what trains, reproducibility."""

import dataclasses

import numpy as np
import pytest
import torch

from tli_core.config import TLIConfig, resolve
from tli_core.embeddings import tokenise
from tli_core.errors import TLIError
from tli_core.models import ModelShape, ModelSpec, load_model
from tli_core.training import (
    attach_lora,
    epoch_batches,
    gradient_blocks,
    infonce_loss,
    step_loss,
    total_steps,
    train,
    triplet_loss,
)

TINY = ModelShape(num_layers=4, model_type="llama", linear_modules=frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}))


def resolved(config, n_trained=10, n_control=5):
    return resolve(config, TINY, n_trained, n_control)[0]


@pytest.fixture
def fresh(tiny_model_dir):
    """A model of our own: training attaches adapters to it."""
    return load_model(ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"))


def test_defaults_are_the_published_settings():
    c = TLIConfig()
    assert c.model.quantization == "nf4" and c.model.compute_dtype == "bfloat16"
    assert c.target_layers == [2] and c.pooling == "mean"
    assert (c.lora_r, c.lora_alpha, c.lora_dropout) == (16, 32, 0.05)
    assert c.target_modules is None and c.adapter_blocks == "all"  # q_proj, v_proj per architecture
    assert (c.loss, c.margin) == ("triplet", 0.4)
    assert (c.learning_rate, c.warmup_steps, c.batch_size, c.epochs) == (2e-4, 50, 8, 5)
    assert c.early_exit and not c.allow_overlap
    assert TLIConfig.from_dict(c.to_dict()) == c
    assert all(TLIConfig.help()[f.name] for f in dataclasses.fields(TLIConfig))


def test_steps_of_the_paper_run():
    assert total_steps(623, 8, 5) == 390  # 78 batches per epoch
    assert total_steps(17, 8, 1) == 2  # 8 + 9: a lone last pair joins the batch before it
    batches = epoch_batches(17, 8, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [8, 9] and sorted(sum(batches, [])) == list(range(17))


@pytest.mark.parametrize("changes, message", [
    ({"lora_r": 0}, "rank must be at least 1"),
    ({"batch_size": 1}, "no in-batch negatives"),
    ({"epochs": 0}, "epochs"),
    ({"learning_rate": 0}, "learning rate"),
    ({"loss": "mse"}, "unknown loss"),
    ({"target_layers": [5]}, "target layer 5 is outside"),
    ({"target_layers": [0]}, "input embedding table"),
    ({"eval_layer": 9}, "evaluation layer 9 is outside"),
    ({"adapter_blocks": "late", "target_layers": [2]}, "nothing would train"),
    ({"adapter_blocks": "3-9"}, "within 1..4"),
])
def test_bad_settings_are_refused(changes, message):
    with pytest.raises(TLIError, match=message):
        resolve(dataclasses.replace(TLIConfig(), **changes), TINY, n_trained=10, n_control=5)


def test_empty_control_set_is_refused():
    with pytest.raises(TLIError, match="control set is empty"):
        resolve(TLIConfig(), TINY, n_trained=10, n_control=0)


def test_resolution_gives_numbers_warns_about_idle_adapters_and_never_changes_the_config():
    c = TLIConfig(target_layers=[-3])
    before = c.to_dict()
    r, warnings = resolve(c, TINY, n_trained=10, n_control=5)
    assert c.to_dict() == before  # the config stays as the user wrote it
    assert r.target_layers == [2] and r.eval_layer == 3  # the paper's "layer L-1"
    assert "2 of 4 adapter blocks lie beyond target layer 2" in warnings[0]
    assert r.adapter_blocks == [1, 2, 3, 4] and r.learning_blocks == [1, 2]
    assert r.target_modules == ["q_proj", "v_proj"]
    assert resolved(dataclasses.replace(c, adapter_blocks="up_to_target")).adapter_blocks == [1, 2]
    assert resolved(dataclasses.replace(c, adapter_blocks="early")).adapter_blocks == [1, 2]
    assert resolved(dataclasses.replace(c, adapter_blocks="late", target_layers=[4])).adapter_blocks == [3, 4]
    assert resolved(dataclasses.replace(c, adapter_blocks="1,3-4")).adapter_blocks == [1, 3, 4]


def test_triplet_loss_matches_a_loop():
    torch.manual_seed(0)
    src = torch.nn.functional.normalize(torch.randn(6, 5), dim=-1)
    tgt = torch.nn.functional.normalize(torch.randn(6, 5), dim=-1)
    loss, info = triplet_loss(src, tgt, margin=0.4)
    terms = []
    for i in range(6):
        pos = float(src[i] @ tgt[i])
        neg = max(float(src[i] @ tgt[j]) for j in range(6) if j != i)
        terms.append(max(0.0, 0.4 + neg - pos))
    assert loss.item() == pytest.approx(np.mean(terms), abs=1e-6)
    assert info["pos_sim"] == pytest.approx(float((src * tgt).sum(1).mean()), abs=1e-6)


def test_synonym_targets_are_not_negatives():
    src = torch.eye(3)
    tgt = torch.eye(3)
    tgt[1] = tgt[0]  # words 0 and 1 share the same English translation
    same = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    _, with_mask = triplet_loss(src, tgt, 0.4, same)
    _, without = triplet_loss(src, tgt, 0.4)
    assert with_mask["neg_sim"] == pytest.approx(0.0) and without["neg_sim"] > 0


def test_infonce_matches_cross_entropy():
    torch.manual_seed(1)
    src = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    tgt = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    loss, _ = infonce_loss(src, tgt, temperature=0.1)
    logits = (src @ tgt.T).numpy() / 0.1
    ref = np.mean([np.log(np.exp(row).sum()) - row[i] for i, row in enumerate(logits)])
    assert loss.item() == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("layers", [[1], [2], [1, 3]])
def test_early_exit_gives_the_full_forward_loss(fresh, pairs_df, layers):
    config = TLIConfig(target_layers=layers, lora_dropout=0.0)
    r = resolved(config)
    peft_model = attach_lora(fresh.model, config, r)
    with torch.no_grad():  # give the adapters non-zero weights so they matter
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    tok_s = tokenise(fresh.tokenizer, list(pairs_df["swahili"]))
    tok_t = tokenise(fresh.tokenizer, list(pairs_df["english"]))
    idx = list(range(8))
    pad = fresh.tokenizer.pad_token_id
    early, _ = step_loss(peft_model, tok_s, tok_t, idx, pad, config, r.target_layers, None, "cpu")
    full, _ = step_loss(peft_model, tok_s, tok_t, idx, pad, dataclasses.replace(config, early_exit=False),
                        r.target_layers, None, "cpu")
    assert early.item() == pytest.approx(full.item(), abs=1e-6)
    early.backward()
    assert gradient_blocks(peft_model) == list(range(1, max(layers) + 1))


def _train(lm, pairs_df, **changes):
    config = TLIConfig(target_layers=[2], batch_size=4, epochs=2, warmup_steps=1, learning_rate=1e-2, **changes)
    r = resolved(config, len(pairs_df), 1)
    peft_model = attach_lora(lm.model, config, r)
    steps = []
    result = train(peft_model, lm.tokenizer, pairs_df, config, r, on_step=steps.append)
    return peft_model, result, steps


def test_only_the_adapters_in_reach_train(fresh, pairs_df):
    base = {n: p.detach().clone() for n, p in fresh.model.named_parameters()}
    peft_model, result, steps = _train(fresh, pairs_df)
    assert result.state == "done" and result.steps == result.total_steps == len(steps) == 2 * 5  # 18 pairs: 4+4+4+4+2
    assert steps[-1]["loss"] < steps[0]["loss"] + 1e-9 or steps[-1]["pos_sim"] > steps[0]["pos_sim"]
    for name, p in peft_model.named_parameters():
        if "lora_" not in name:
            key = name.replace("base_model.model.", "", 1).replace(".base_layer", "")
            torch.testing.assert_close(p, base[key], msg=name)
        elif "lora_B" in name:
            block = int(name.split(".layers.")[1].split(".")[0]) + 1
            moved = p.abs().sum().item() > 0
            assert moved == (block <= 2), name  # blocks beyond the target layer never move


def test_training_is_reproducible(tiny_model_dir, pairs_df):
    runs = []
    for _ in range(2):
        lm = load_model(ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"))
        runs.append([round(s["loss"], 6) for s in _train(lm, pairs_df)[2]])
    assert runs[0] == runs[1]


def test_stop_request_is_honoured_between_steps(fresh, pairs_df):
    config = TLIConfig(target_layers=[2], batch_size=4, epochs=3, warmup_steps=1)
    r = resolved(config)
    peft_model = attach_lora(fresh.model, config, r)
    steps, polls = [], []

    def stop_after_three():
        polls.append(1)
        return len(polls) > 3

    result = train(peft_model, fresh.tokenizer, pairs_df, config, r, on_step=steps.append, should_stop=stop_after_three)
    # stopped before step 4; the three steps' metrics, still on the device when it stopped, are all reported
    assert result.state == "stopped" and result.steps == 3 and [s["step"] for s in steps] == [1, 2, 3]


def test_nan_loss_stops_with_a_clear_status(fresh, pairs_df, monkeypatch):
    import tli_core.training as tr

    real = tr.batch_loss
    calls = []

    def flaky(*args, **kwargs):
        loss, info = real(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 2 else loss), info

    monkeypatch.setattr(tr, "batch_loss", flaky)
    _, result, steps = _train(fresh, pairs_df)
    assert result.state == "failed" and "loss became nan at step 2" in result.message and len(steps) == 1


# --------------------------------------------------------------------------- a step at the device's pace

SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "numpy", "nonzero", "cpu")


def test_a_training_step_never_reads_the_device(fresh, pairs_df, monkeypatch):
    """Every call that would make the host wait for the device (a value read, a data-dependent shape) is
    counted by where it comes from: inside a step there are none; the metrics come over once per 10 steps."""
    import traceback
    from pathlib import Path

    sites = []
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            frame = traceback.extract_stack(limit=2)[0]
            sites.append((_name, Path(frame.filename).name, frame.name))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    config = TLIConfig(target_layers=[2], batch_size=4, epochs=3, warmup_steps=1)
    r = resolved(config, len(pairs_df), 1)
    steps = []
    result = train(attach_lora(fresh.model, config, r), fresh.tokenizer, pairs_df, config, r, on_step=steps.append,
                   log_every=10)
    monkeypatch.undo()
    assert result.state == "done" and len(steps) == result.steps == 15
    # the optimiser's step counters are host tensors by PyTorch's design (on CUDA, fused AdamW keeps them on
    # the device and never calls this); the epoch's shuffled order is drawn on the host
    inside = [s for s in sites if s[2] not in ("flush", "epoch_batches") and (s[1], s[2]) != ("optimizer.py",
                                                                                              "_get_value")]
    assert inside == []
    # one read per window of 10 steps and one at each epoch's end: steps 1-5 | 6-10 | 11-15
    assert [s for s in sites if s[2] == "flush"] == [("tolist", "training.py", "flush")] * 3


def test_the_prepared_causal_mask_gives_the_padded_batch_exactly(fresh):
    """Right-padded rows under the prepared causal mask = the same rows with the usual 2D padding mask, for
    both attention implementations the mask is prepared for."""
    from tli_core.embeddings import causal_mask, make_batch, pooled_hidden_states

    tok = tokenise(fresh.tokenizer, ["maji", "habari za asubuhi", "ndege", "a"])
    ids, mask, weights = make_batch(tok, range(4), 0, "mean")
    for impl in ("sdpa", "eager"):
        fresh.model.set_attn_implementation(impl)
        with torch.no_grad():
            padded = pooled_hidden_states(fresh.model, ids, mask, weights, [1, 2, 4])
            prepared = pooled_hidden_states(fresh.model, ids, causal_mask(fresh.model, ids.shape[1], "cpu"),
                                            weights, [1, 2, 4])
        for k in (1, 2, 4):
            torch.testing.assert_close(prepared[k], padded[k], atol=1e-6, rtol=0)


def test_only_tensors_that_can_learn_are_optimised_with_the_same_result(tiny_model_dir, pairs_df, monkeypatch):
    import tli_core.training as tr

    def trained(all_tensors: bool):
        lm = load_model(ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"))
        if all_tensors:  # the old way: AdamW and the gradient norm over every adapter tensor of every block
            monkeypatch.setattr(tr, "learning_parameters",
                                lambda model, blocks: [p for p in model.parameters() if p.requires_grad])
        peft_model, result, steps = _train(lm, pairs_df)
        monkeypatch.undo()
        return {n: p.detach().clone() for n, p in peft_model.named_parameters() if "lora_" in n}, steps

    learning, steps_l = trained(False)
    everything, steps_e = trained(True)
    assert learning.keys() == everything.keys() and len(learning) == 16  # q/v, A/B, 4 blocks
    assert all(torch.equal(learning[n], everything[n]) for n in learning)
    assert [s["loss"] for s in steps_l] == [s["loss"] for s in steps_e]
    assert [s["grad_norm"] for s in steps_l] == [s["grad_norm"] for s in steps_e]
    r = resolved(TLIConfig(target_layers=[2]), len(pairs_df), 1)
    lm = load_model(ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"))
    peft_model = attach_lora(lm.model, TLIConfig(target_layers=[2]), r)
    names = {id(p): n for n, p in peft_model.named_parameters()}
    chosen = [names[id(p)] for p in tr.learning_parameters(peft_model, r.learning_blocks)]
    assert len(chosen) == 8 and all(".layers.0." in n or ".layers.1." in n for n in chosen)
