"""Embedding map (PCA, t-SNE), the temporary adapter, and generation probes on the tiny model."""

import numpy as np
import pytest
import torch

from tli_core.adapters import temporary_adapter
from tli_core.embeddings import embed
from tli_core.errors import TLIError
from tli_core.probes import answer, prompts_for, run_probes
from tli_core.projection import map_points, pca_2d, tsne_2d


def test_pca_matches_numpy_svd():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6)) * np.array([5, 3, 1, 1, 1, 1])
    got = pca_2d(x)
    c = x - x.mean(0)
    _, _, vt = np.linalg.svd(c)
    for k in range(2):  # same components up to sign
        ref = c @ vt[k]
        assert abs(np.corrcoef(got[:, k], ref)[0, 1]) == pytest.approx(1.0)
    assert got[:, 0].var() > got[:, 1].var()


def test_tsne_keeps_clusters_apart():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(c, 1, (25, 8)) for c in (0, 10, -10)])
    y = tsne_2d(x, perplexity=10, iterations=400)
    labels = np.repeat([0, 1, 2], 25)
    centres = np.stack([y[labels == i].mean(0) for i in range(3)])
    within = np.mean([np.linalg.norm(y[labels == i] - centres[i], axis=1).mean() for i in range(3)])
    between = min(np.linalg.norm(centres[i] - centres[j]) for i in range(3) for j in range(i + 1, 3))
    assert between > 3 * within


@pytest.fixture(scope="module")
def trained_run(tiny_model_dir, tmp_path_factory):
    from tests.conftest import trained_tiny_run

    return trained_tiny_run(tiny_model_dir, tmp_path_factory.mktemp("research"), learning_rate=1e-2)


def test_temporary_adapter_gives_after_and_restores_the_model(tiny, trained_run):
    pairs = trained_run.table("pairs", protocol="paper-text")  # layer L-1 = 3, mean pooling
    words = list(pairs["swahili"][:5]) + list(pairs["english"][:5])
    base = embed(tiny.model, tiny.tokenizer, words, layers=[3]).at(3)
    with temporary_adapter(tiny.model, trained_run.adapter_dir) as tuned:
        after = embed(tuned, tiny.tokenizer, words, layers=[3]).at(3)
    cos_after = (after[:5] * after[5:]).sum(1).numpy()
    np.testing.assert_allclose(cos_after, pairs["after"][:5], atol=1e-5)
    torch.testing.assert_close(embed(tiny.model, tiny.tokenizer, words, layers=[3]).at(3), base)
    assert not hasattr(tiny.model, "peft_config") or not tiny.model.peft_config
    with pytest.raises(TLIError, match="no PEFT adapter"):
        with temporary_adapter(tiny.model, trained_run.path):
            pass


def test_map_points_before_and_after(tiny, trained_run, pairs_df, control_df):
    pts = map_points(tiny.model, tiny.tokenizer, {"trained": pairs_df, "control": control_df}, layer=3,
                     weights_dir=trained_run.adapter_dir, method="pca")
    assert set(pts["phase"]) == {"before", "after"}
    assert len(pts) == 2 * 2 * (len(pairs_df) + len(control_df))
    assert set(pts["language"]) == {"swahili", "english"} and set(pts["set"]) == {"trained", "control"}
    row = pts[(pts["word"] == "maji") & (pts["phase"] == "before")].iloc[0]
    assert row["partner"] == "water"
    from tli_core.figures import embedding_map_figure

    fig = embedding_map_figure(pts)
    assert len(fig.layout.annotations) == 2  # a before and an after panel


def test_probe_prompts_and_answers(tiny, trained_run, control_df):
    table = prompts_for(control_df.head(2), {"sw→en": "The English word for '{word}' is"})
    assert list(table["prompt"]) == ["The English word for 'jicho' is", "The English word for 'sikio' is"]
    assert list(table["expected"]) == ["eye", "ear"]
    assert answer(" 'maji', which means") == "maji" and answer(' "good morning".') == "good morning"
    with pytest.raises(TLIError, match="must contain"):
        prompts_for(control_df, {"sw→en": "no placeholder"})
    out = run_probes(tiny.model, tiny.tokenizer, control_df.head(3), weights_dir=trained_run.adapter_dir,
                     max_new_tokens=3)
    assert len(out) == 6 and {"base", "tuned", "base_correct", "tuned_correct", "base_text"} <= set(out)
    # the base column is the base model's own: the same without any adapter around
    again = run_probes(tiny.model, tiny.tokenizer, control_df.head(3), max_new_tokens=3)
    assert list(again["base_text"]) == list(out["base_text"])
    # and it is what a plain one-prompt greedy generate gives
    enc = tiny.tokenizer(out["prompt"].iloc[0], return_tensors="pt")
    ids = tiny.model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tiny.tokenizer.pad_token_id)
    assert tiny.tokenizer.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip() == \
        out["base_text"].iloc[0]
