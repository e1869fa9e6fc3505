"""Artifact diagnostics on a tiny model with a planted massive first-token activation."""

import pytest
import torch

from tli_core.diagnostics import activation_report, compare_without_artifacts, dominated_layers, massive_dims
from tli_core.models import ModelSpec, load_model

PLANTED_DIM = 7


@pytest.fixture
def planted(tiny_model_dir):
    """Block 1 writes +300 into dimension 7 of each word's first token: a massive activation that the
    residual stream carries to every later layer, as BOS sinks do in real Llamas. A word's first
    token is position 0 of its sequence (words packed into one row each start again at 0)."""
    lm = load_model(ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"))

    def plant(module, args, kwargs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        positions = kwargs.get("position_ids")
        if positions is None:
            hidden[:, 0, PLANTED_DIM] += 300.0
        else:
            hidden[..., PLANTED_DIM] += 300.0 * (positions == 0).expand(hidden.shape[:2]).to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = lm.model.model.layers[0].register_forward_hook(plant, with_kwargs=True)
    yield lm
    handle.remove()


def test_report_finds_the_planted_activation(planted, pairs_df):
    words = list(pairs_df["swahili"]) + list(pairs_df["english"])
    report = activation_report(planted.model, planted.tokenizer, words, batch_size=7)
    assert list(report["layer"]) == list(range(5))
    row0, row2 = report.iloc[0], report.iloc[2]
    assert row0["first_to_other_ratio"] < 3  # the embedding table has no sink
    assert row2["first_to_other_ratio"] > 20
    assert row2["top_dims"].split(",")[0] == str(PLANTED_DIM)
    assert row2["max_abs_activation"] == pytest.approx(300, rel=0.2)
    assert row2["max_to_median_ratio"] > 100
    assert massive_dims(report)[0] == PLANTED_DIM
    # the final RMSNorm rescales every token to a similar norm, but the dimension still dominates
    assert dominated_layers(report) == [1, 2, 3]
    assert report.iloc[4]["top_dims"].split(",")[0] == str(PLANTED_DIM)


def test_report_norms_match_a_direct_computation(tiny, pairs_df):
    words = list(pairs_df["swahili"][:5])
    report = activation_report(tiny.model, tiny.tokenizer, words, batch_size=2)
    firsts, rests = [], []
    with torch.no_grad():
        for w in words:
            hs = tiny.model(**tiny.tokenizer(w, return_tensors="pt"), output_hidden_states=True).hidden_states[2][0]
            firsts.append(hs[0].norm().item())
            rests += [h.norm().item() for h in hs[1:]]
    assert report.iloc[2]["first_token_norm"] == pytest.approx(sum(firsts) / len(firsts), rel=1e-5)
    assert report.iloc[2]["other_tokens_norm"] == pytest.approx(sum(rests) / len(rests), rel=1e-5)


def test_leaving_the_artifact_out_changes_the_curve(planted, pairs_df):
    comp = compare_without_artifacts(planted.model, planted.tokenizer, {"trained": pairs_df})
    assert comp.dims[0] == PLANTED_DIM
    c = comp.curves.set_index(["variant", "layer"])
    as_is = c.loc[("as is", 2)]
    no_first = c.loc[("first token left out", 2)]
    no_dims = c.loc[(f"dims {','.join(map(str, comp.dims))} left out", 2)]
    # with the artifact, every pair -- shuffled or not -- looks almost identical
    assert as_is["shuffled_mean"] > 0.9 and as_is["true_mean"] > 0.9
    assert no_first["shuffled_mean"] < as_is["shuffled_mean"] - 0.3
    assert no_dims["shuffled_mean"] < as_is["shuffled_mean"] - 0.3
    # layer 0 (before the planted block) is the same in every variant but the first-token one
    assert c.loc[("as is", 0)]["true_mean"] == pytest.approx(c.loc[(f"dims {','.join(map(str, comp.dims))} left out",
                                                                    0)]["true_mean"], abs=0.05)
