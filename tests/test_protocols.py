"""Named evaluation protocols, analysis precision, adapters in and out, and the statistics fixes (issue 11)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from tests.conftest import WORDS
from tli_core.adapters import load_adapter, merged_adapter, strip_adapters, temporary_adapter
from tli_core.alignment import precision_check
from tli_core.cli import main
from tli_core.config import TLIConfig, resolve
from tli_core.embeddings import embed
from tli_core.errors import OverlapError, TLIError
from tli_core.models import ModelShape, ModelSpec, load_model
from tli_core.pairs import check_leakage
from tli_core.precision import analysis_precision
from tli_core.runs import create_run
from tli_core.stats import correct_pvalues, paired_stats
from tli_core.training import translation_mask
from tli_core.worker import check_config, execute


def pair_files(d):
    t, c = d / "t.csv", d / "c.csv"
    pd.DataFrame(WORDS[:18], columns=["swahili", "english"]).to_csv(t, index=False)
    pd.DataFrame(WORDS[18:], columns=["swahili", "english"]).to_csv(c, index=False)
    return t, c


@pytest.fixture(scope="module")
def nf4_run(tiny_model_dir, tmp_path_factory):
    """A run on the tiny model in NF4 with bf16 compute: merging re-quantizes, analysis casts to float32."""
    d = tmp_path_factory.mktemp("protocols")
    t, c = pair_files(d)
    config = TLIConfig(model=ModelSpec(model=str(tiny_model_dir), quantization="nf4", device="cpu"),
                       trained_pairs=str(t), control_pairs=str(c), batch_size=4, epochs=2, warmup_steps=1,
                       learning_rate=2e-2, seed=7)
    run = create_run(config, d / "runs")
    status = execute(run)
    assert status["state"] == "done", status
    return run


def test_a_run_is_evaluated_under_the_three_protocols(nf4_run):
    assert nf4_run.protocols() == ["studio", "paper-text", "paper-code"]
    s = {name: nf4_run.summary(name) for name in nf4_run.protocols()}
    assert (s["studio"]["eval_layer"], s["studio"]["pooling"], s["studio"]["merged"]) == (3, "mean_sink", False)
    assert (s["paper-text"]["eval_layer"], s["paper-text"]["pooling"], s["paper-text"]["merged"]) == (3, "mean", False)
    assert (s["paper-code"]["eval_layer"], s["paper-code"]["pooling"], s["paper-code"]["merged"]) == (2, "mean_words",
                                                                                                      True)
    assert all(v["precision"] == "float32" for v in s.values())
    assert nf4_run.summary()["headline"] == "studio" and nf4_run.summary()["groups"] == s["studio"]["groups"]
    diff = s["paper-code"]["merge_vs_attached"]["trained"]
    assert len(diff["max_abs"]) == 5 and max(diff["max_abs"]) > 0  # re-quantizing the merge moved something
    # the config keeps what the user wrote; the run records the resolved layers beside it
    assert nf4_run.config_dict()["eval_layer"] == "paper"
    assert nf4_run.raw_status()["resolved"]["protocol_layers"] == {"studio": 3, "paper-text": 3, "paper-code": 2}


def test_paper_code_equals_peft_merge_and_unload_on_a_fresh_model(nf4_run, tiny_model_dir):
    """Independent of our merge context: PEFT's own merge_and_unload into a freshly loaded 4-bit base."""
    from peft import PeftModel

    pairs = nf4_run.table("pairs", "paper-code")
    lm = load_model(ModelSpec(model=str(tiny_model_dir), quantization="nf4", device="cpu"))
    words = list(pairs["swahili"]) + list(pairs["english"])
    n = len(pairs)

    def cosines(model):
        v = embed(model, lm.tokenizer, words, layers=[2], pooling="mean_words").at(2)
        return (v[:n] * v[n:]).sum(1).double().numpy()

    np.testing.assert_allclose(cosines(lm.model), pairs["before"], atol=1e-5)
    merged = PeftModel.from_pretrained(lm.model, str(nf4_run.adapter_dir)).merge_and_unload()
    np.testing.assert_allclose(cosines(merged), pairs["after"], atol=1e-5)


def test_merging_for_an_evaluation_leaves_the_4bit_base_exactly_as_it_was(nf4_run, tiny_model_dir):
    lm = load_model(ModelSpec(model=str(tiny_model_dir), quantization="nf4", device="cpu"))
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    tuned = load_adapter(lm.model, nf4_run.adapter_dir)
    attached = embed(tuned, lm.tokenizer, ["maji", "water"], layers=[2]).at(2)
    with merged_adapter(tuned):
        merged = embed(tuned, lm.tokenizer, ["maji", "water"], layers=[2]).at(2)
    again = embed(tuned, lm.tokenizer, ["maji", "water"], layers=[2]).at(2)
    assert not torch.equal(merged, attached)  # merging really re-quantized
    torch.testing.assert_close(again, attached, atol=0, rtol=0)
    tuned.unload()
    after = lm.model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before)


def test_fp4_is_bitsandbytes_default_4bit_type(tiny_model_dir):
    import bitsandbytes as bnb

    lm = load_model(ModelSpec(model=str(tiny_model_dir), quantization="fp4", device="cpu"))
    q = lm.model.model.layers[0].self_attn.q_proj
    assert isinstance(q, bnb.nn.Linear4bit) and q.weight.quant_state.quant_type == "fp4"


def test_stored_statistics_match_scipy_with_the_config_seed_and_corrected_layer_p_values(nf4_run):
    for protocol in nf4_run.protocols():
        s = nf4_run.summary(protocol)
        pairs = nf4_run.table("pairs", protocol)
        for group in ("trained", "control"):
            g = pairs[pairs["set"] == group]
            ref = paired_stats(g["before"], g["after"], group, seed=7)  # the run's seed, not 0
            assert s["groups"][group]["ci_low"] == pytest.approx(ref.ci_low)
            assert s["groups"][group]["p"] == pytest.approx(sps.ttest_rel(g["after"], g["before"]).pvalue)
        stats = nf4_run.table("layer_stats", protocol)
        for _, rows in stats.groupby("set"):
            np.testing.assert_allclose(rows["p_holm"], correct_pvalues(rows["p"].to_numpy(), "holm"))
            tested = rows["p"].notna()  # a layer no pair moved on (the embeddings under LoRA) has no test
            assert (rows.loc[tested, "p_holm"] >= rows.loc[tested, "p"] - 1e-15).all()
            assert rows.loc[~tested, "p_holm"].isna().all()


def test_percent_change_keeps_its_sign_when_the_baseline_is_negative():
    s = paired_stats([-0.5, -0.4, -0.6], [-0.3, -0.2, -0.4])  # every pair moved up by 0.2
    assert s.change == pytest.approx(0.2) and s.pct_change == pytest.approx(+40.0)
    down = paired_stats([-0.5, -0.4, -0.6], [-0.7, -0.6, -0.9])
    assert down.pct_change < 0


def test_a_saved_config_evaluates_at_the_other_models_paper_layer():
    config = TLIConfig.from_dict(json.loads(json.dumps(TLIConfig().to_dict())))  # as read back from config.json
    assert config.eval_layer == "paper"
    small = ModelShape(num_layers=4, model_type="llama")
    large = ModelShape(num_layers=32, model_type="llama")
    assert resolve(config, small)[0].eval_layer == 3 and resolve(config, large)[0].eval_layer == 31
    assert resolve(dataclasses.replace(config, eval_layer="last"), large)[0].eval_layer == 32
    assert resolve(dataclasses.replace(config, eval_layer="target"), large)[0].eval_layer == 2
    assert TLIConfig.from_dict({"eval_layer": None}).eval_layer == "paper"  # configs written before
    with pytest.raises(TLIError, match="evaluation layer must be"):
        TLIConfig(eval_layer="middle")
    with pytest.raises(TLIError, match="unknown evaluation protocol"):
        TLIConfig(protocols=["paper-txt"])


def test_the_defaults_follow_the_authors_code_where_the_paper_is_silent():
    c = TLIConfig()
    assert c.grad_clip is None  # the authors' script does not clip
    assert c.protocols == ["studio", "paper-text", "paper-code"] and c.analysis_precision == "float32"


# --------------------------------------------------------------------------- adapters in and out

def test_a_failed_adapter_load_leaves_the_model_exactly_as_it_was(tiny, nf4_run, monkeypatch):
    from peft import PeftModel

    tree = str(tiny.model)
    state = {k: v.clone() for k, v in tiny.model.state_dict().items()}

    def broken(self, *args, **kwargs):  # PEFT fails after it has injected the LoRA layers
        raise RuntimeError("size mismatch for lora_A (simulated)")

    monkeypatch.setattr(PeftModel, "load_adapter", broken)
    with pytest.raises(TLIError, match="does not fit"):
        load_adapter(tiny.model, nf4_run.adapter_dir)
    assert str(tiny.model) == tree
    after = tiny.model.state_dict()
    assert set(after) == set(state) and all(torch.equal(after[k], state[k]) for k in state)
    assert not hasattr(tiny.model, "peft_config")
    assert strip_adapters(tiny.model) == 0


def test_an_adapter_of_another_shape_is_refused_before_the_model_is_touched(tmp_path, tiny, nf4_run):
    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_config.json").write_text((nf4_run.adapter_dir / "adapter_config.json").read_text())
    tensors = load_file(nf4_run.adapter_dir / "adapter_model.safetensors")
    key = next(k for k in tensors if "lora_A" in k)
    tensors[key] = torch.zeros(tensors[key].shape[0], tensors[key].shape[1] + 1)
    save_file(tensors, bad / "adapter_model.safetensors")
    tree = str(tiny.model)
    with pytest.raises(TLIError, match="does not fit this model"):
        with temporary_adapter(tiny.model, bad):
            pass
    assert str(tiny.model) == tree
    (bad / "adapter_model.safetensors").rename(bad / "adapter_model.bin")
    with pytest.raises(TLIError, match="never pickled"):
        load_adapter(tiny.model, bad)


def test_import_adapter_makes_a_run_that_evaluates_like_the_original(nf4_run, tiny_model_dir, tmp_path, capsys):
    runs = tmp_path / "runs"
    t, c = pair_files(tmp_path)
    args = ["import-adapter", str(nf4_run.adapter_dir), "--model", str(tiny_model_dir), "--quant", "nf4",
            "--device", "cpu", "--pairs", str(t), "--control", str(c), "--runs-dir", str(runs), "--name", "imported"]
    assert main(args) == 0
    assert "every tensor fits" in capsys.readouterr().out
    run = next(p for p in runs.iterdir() if p.name == "imported")
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "imported" and status["import"]["adapter_config"]["r"] == 16
    assert main(["evaluate", "--run", "imported", "--runs-dir", str(runs), "--protocol", "paper-code",
                 "--quiet"]) == 0
    got = pd.read_csv(run / "eval" / "paper-code" / "pairs.csv")
    np.testing.assert_allclose(got["after"], nf4_run.table("pairs", "paper-code")["after"], atol=1e-6)
    # an adapter for another model: one line, exit 2, nothing written
    other = tmp_path / "other-model"
    from tests.conftest import build_tiny_model

    build_tiny_model(other, hidden=32)
    before = sorted(p.name for p in runs.iterdir())
    assert main(["import-adapter", str(nf4_run.adapter_dir), "--model", str(other), "--runs-dir", str(runs)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the adapter does not fit this model") and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in runs.iterdir()) == before


# --------------------------------------------------------------------------- overlap and negatives

def test_identical_pairs_leak_and_shared_headwords_only_warn(tiny_model_dir):
    trained = pd.DataFrame({"swahili": ["kioo", "maji", "mbwa"], "english": ["mirror", "water", "dog"]})
    control = pd.DataFrame({"swahili": ["kioo", "paka"], "english": ["glass", "cat"]})
    leak = check_leakage(trained, control)
    assert not leak.leaks and leak.shared_headwords == ["kioo"]
    config = TLIConfig(model=ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"), batch_size=2)
    _, warnings = check_config(config, trained, control)
    assert any("different translations" in w and "kioo" in w for w in warnings)
    control = pd.concat([control, trained.iloc[[1]]], ignore_index=True)  # maji-water in both
    with pytest.raises(OverlapError) as err:
        check_config(config, trained, control)
    assert "--allow-overlap" in str(err.value) and "maji–water" in str(err.value)
    assert "the “Accept” box" in str(err.value.with_control("the “Accept” box"))
    _, warnings = check_config(dataclasses.replace(config, allow_overlap=True), trained, control)
    assert any("accepted overlap" in w for w in warnings)


def test_valid_translations_are_never_negatives_in_either_direction():
    from tli_core.alignment import pair_index

    sw = ["kioo", "kioo", "kijana", "mvulana", "paka"]
    en = ["mirror", "glass", "boy", "boy", "cat"]
    mask = translation_mask(pair_index(sw, en), [0, 1, 2, 3, 4]).numpy()
    assert mask[0, 1] and mask[1, 0]  # one Swahili anchor, two translations
    assert mask[2, 3] and mask[3, 2]  # two Swahili words, one English translation
    assert not mask[0, 2] and not mask[4, 0] and mask.diagonal().all()


def test_the_authors_loss_lets_a_second_translation_be_the_negative(monkeypatch):
    """negatives=any-other reproduces their loss: only the row itself is excluded, so 'glass' can be the hardest
    negative of 'kioo' whose pair here is 'mirror'; the default never lets it."""
    from tli_core import training
    from tli_core.alignment import pair_index

    sw, en = ["kioo", "kioo", "paka"], ["mirror", "glass", "cat"]
    vecs = torch.nn.functional.normalize(torch.tensor([[1.0, 0, 0], [1.0, 0.1, 0], [0, 1.0, 0],  # Swahili rows
                                                       [0.9, 0.1, 0], [1.0, 0, 0], [0, 0, 1.0]]), dim=-1)
    monkeypatch.setattr(training, "pooled_for_loss", lambda *a, **k: {2: vecs})
    monkeypatch.setattr(training, "causal_mask", lambda *a, **k: None)
    same = translation_mask(pair_index(sw, en), [0, 1, 2])
    losses = {}
    for negatives in ("not-translations", "any-other"):
        cfg = TLIConfig(negatives=negatives)
        loss, _ = training.batch_loss(None, torch.zeros((6, 2), dtype=torch.long), torch.ones((6, 2)), 3, cfg, [2],
                                      same, "cpu")
        losses[negatives] = float(loss)
    sims = vecs[:3] @ vecs[3:].T
    # by hand, the authors' way: the hardest other column, translation or not
    want = sum(max(0.0, 0.4 + float(max(sims[i, j] for j in range(3) if j != i)) - float(sims[i, i]))
               for i in range(3)) / 3
    assert losses["any-other"] == pytest.approx(want, abs=1e-6)
    assert losses["not-translations"] < losses["any-other"]  # 'glass' no longer counts against 'kioo'
    with pytest.raises(TLIError, match="negatives"):
        TLIConfig(negatives="none")


# --------------------------------------------------------------------------- analysis precision

def test_float32_analysis_of_a_bf16_model_equals_a_per_word_float32_loop_and_restores_it(tiny_model_dir):
    lm = load_model(ModelSpec(model=str(tiny_model_dir), quantization="nf4", device="cpu"))
    state = {k: (v.clone(), v.dtype) for k, v in lm.model.state_dict().items()}
    words = ["maji", "water", "habari za asubuhi", "good morning"]
    batched = embed(lm.model, lm.tokenizer, words, precision="float32")
    for k, (v, dtype) in state.items():  # cast back exactly (bf16 -> fp32 -> bf16 is lossless)
        now = lm.model.state_dict()[k]
        assert now.dtype == dtype and torch.equal(now, v), k
    with analysis_precision(lm.model, "float32"), torch.no_grad():
        for i, w in enumerate(words):
            enc = lm.tokenizer(w, return_tensors="pt")
            hs = lm.model.model(**enc, output_hidden_states=True).hidden_states  # the decoder (no lm_head)
            for k in range(5):
                ref = torch.nn.functional.normalize(hs[k][0].float().mean(0), dim=-1)
                torch.testing.assert_close(batched.vectors[k, i], ref, atol=1e-5, rtol=0)


def test_precision_check_measures_bf16_against_float32(tiny_model_dir, tiny, pairs_df):
    fp32 = precision_check(tiny.model, tiny.tokenizer, {"trained": pairs_df})
    assert (fp32["max_abs_delta"] == 0).all() and not fp32["flagged"].any()  # nothing to lose in fp32
    lm = load_model(ModelSpec(model=str(tiny_model_dir), quantization="nf4", device="cpu"))
    report = precision_check(lm.model, lm.tokenizer, {"trained": pairs_df}, sample=10, seed=1)
    assert len(report) == 5 and report["pairs_checked"].iloc[0] == 10
    assert report["max_abs_delta"].iloc[1:].gt(0).all()  # bf16 rounding shows from block 1 on
    # the same numbers by hand for the sampled pairs
    sample = pairs_df.sample(n=10, random_state=1).reset_index(drop=True)
    words = list(sample["swahili"]) + list(sample["english"])
    cos = {}
    for prec in ("compute", "float32"):
        v = embed(lm.model, lm.tokenizer, words, precision=prec).vectors.double()
        cos[prec] = (v[:, :10] * v[:, 10:]).sum(-1).numpy()
    np.testing.assert_allclose(report["max_abs_delta"], np.abs(cos["compute"] - cos["float32"]).max(1), atol=1e-12)


def test_a_scan_checks_the_precision_of_every_pair_not_a_sample(tiny_model_dir, pairs_df, control_df):
    """A maximum over 128 sampled pairs missed rare outliers; the scan now checks every pair (reusing its own
    compute-precision vectors), and a sample says what its largest error guarantees."""
    from tli_core.alignment import check_scope, scan

    lm = load_model(ModelSpec(model=str(tiny_model_dir), quantization="nf4", device="cpu"))
    sets = {"trained": pairs_df, "control": control_df}
    res = scan(lm.model, lm.tokenizer, sets, precision="compute")
    report = res.precision_report
    assert (report["pairs_checked"] == len(pairs_df) + len(control_df)).all()
    assert check_scope(report) == f"all {len(pairs_df) + len(control_df)} pairs checked"
    ref = scan(lm.model, lm.tokenizer, sets, precision="float32")
    for k in range(lm.facts.num_layers + 1):  # the largest error is the largest over every pair, by hand
        want = (res.pairs[f"layer_{k}"] - ref.pairs[f"layer_{k}"]).abs().max()
        assert report.loc[report["layer"] == k, "max_abs_delta"].iloc[0] == pytest.approx(want, abs=1e-6)
    sampled = precision_check(lm.model, lm.tokenizer, sets, sample=10, seed=0)
    assert "with 95% confidence at most 25.9% of all pairs" in check_scope(sampled)  # 1 - 0.05 ** (1 / 10)


def test_which_4bit_weights_a_figure_used_is_checked_and_said(tiny_model_dir, pairs_df, nf4_run):
    """Per-pair values depend on whether 4-bit weights are dequantized straight to float32 or rounded to bf16 first:
    the scan and every run measure it against an independent model holding the bf16-rounded weights in float32."""
    import copy

    import bitsandbytes as bnb

    from tli_core.alignment import conditioning_check
    from tli_core.precision import four_bit_layers

    lm = load_model(ModelSpec(model=str(tiny_model_dir), quantization="nf4", device="cpu"))
    report = conditioning_check(lm.model, lm.tokenizer, {"trained": pairs_df})
    assert list(report["layer"]) == list(range(5)) and report["max_abs_delta"].iloc[1:].gt(0).all()
    # independently: a float32 copy whose 4-bit layers are plain nn.Linear with bf16-rounded weights
    ref = copy.deepcopy(lm.model)
    for name, module in list(ref.named_modules()):
        if module in four_bit_layers(ref):
            w = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state).to(torch.bfloat16)
            lin = torch.nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
            with torch.no_grad():
                lin.weight.copy_(w.float())
            parent, _, child = name.rpartition(".")
            setattr(ref.get_submodule(parent), child, lin)
    words = list(pairs_df["swahili"]) + list(pairs_df["english"])
    n = len(pairs_df)
    exact = embed(lm.model, lm.tokenizer, words, precision="float32").vectors.double()
    rounded = embed(ref, lm.tokenizer, words, precision="float32").vectors.double()
    delta = ((exact[:, :n] * exact[:, n:]).sum(-1) - (rounded[:, :n] * rounded[:, n:]).sum(-1)).abs().max(1).values
    np.testing.assert_allclose(report["max_abs_delta"], delta.numpy(), atol=1e-6)
    assert conditioning_check(load_model(ModelSpec(model=str(tiny_model_dir), quantization="fp32",
                                                   device="cpu")).model, lm.tokenizer, {"trained": pairs_df}) is None
    # a run says which weights its figures used, and which layers are ill-conditioned
    cond = nf4_run.summary("studio")["conditioning"]
    assert cond["weights"].startswith("4-bit weights dequantized straight to float32")
    assert len(cond["max_abs"]) == 5 and all(k in range(5) for k in cond["ill_conditioned_layers"])


def test_the_authors_arithmetic_is_offered_for_an_exact_reproduction(tiny_model_dir, nf4_run):
    """Their script passed no torch_dtype: unquantized modules in float16, the 4-bit layers in bf16."""
    from tli_core.precision import analysis_precision, four_bit_layers
    from tli_core.worker import evaluate_run

    lm = load_model(ModelSpec(model=str(tiny_model_dir), quantization="nf4", device="cpu"))
    before = {k: v.clone() for k, v in lm.model.state_dict().items() if v.is_floating_point()}
    with analysis_precision(lm.model, "authors"):
        assert lm.model.get_input_embeddings().weight.dtype == torch.float16
        assert lm.model.model.layers[0].input_layernorm.weight.dtype == torch.float16
        assert {m.compute_dtype for m in four_bit_layers(lm.model)} == {torch.bfloat16}
        v = embed(lm.model, lm.tokenizer, ["maji", "water"], precision="compute").vectors
    after = lm.model.state_dict()
    assert all(torch.equal(after[k], t) and after[k].dtype == t.dtype for k, t in before.items())  # restored exactly
    assert not torch.allclose(v, embed(lm.model, lm.tokenizer, ["maji", "water"], precision="float32").vectors)
    summary = evaluate_run(nf4_run, protocols=["paper-code-exact"])
    s = nf4_run.summary("paper-code-exact")
    assert s["precision"] == "authors" and s["base_quantization"] == "fp4" and s["eval_layer"] == 2
    assert "float16" in s["protocol_description"]
    assert summary["protocols"]["paper-code-exact"]["groups"]["control"]["n"] == 6
