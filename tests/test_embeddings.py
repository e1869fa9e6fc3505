"""The engine's vectorised, batched, early-exit embeddings against a plain per-word loop."""

import numpy as np
import pytest
import torch

import tli_core.embeddings as embeddings_module
from tli_core.anatomy import decoder_parts
from tli_core.embeddings import (
    POOLINGS,
    bytes_per_word,
    choose_batch_size,
    embed,
    embed_poolings,
    group_rows,
    make_batch,
    pack_rows,
    pooled_hidden_states,
    tokenise,
)
from tli_core.errors import TLIError

WORDS = ["maji", "water", "kitabu", "book", "habari za asubuhi", "good morning", "a", "mbwa"]


def reference_embedding(model, tokenizer, word, layer, pooling):
    """The paper's way, one word at a time: full forward, hidden_states[layer], masked mean."""
    enc = tokenizer(word, return_tensors="pt", return_special_tokens_mask=True)
    special = enc.pop("special_tokens_mask")[0]
    with torch.no_grad():
        hs = model(**enc, output_hidden_states=True).hidden_states[layer][0].double()
    if pooling == "mean":
        v = hs.mean(0)
    elif pooling in ("mean_words", "mean_sink"):  # the tiny tokenizer adds BOS: its own sink
        v = hs[special == 0].mean(0)
    elif pooling == "mean_no_first":
        v = hs[1:].mean(0) if len(hs) > 1 else hs[0]
    else:
        v = hs[-1]
    return (v / v.norm()).numpy()


@pytest.mark.parametrize("pooling", POOLINGS)
def test_batched_pooling_matches_per_word_loop(tiny, pooling):
    n = tiny.facts.num_layers
    emb = embed(tiny.model, tiny.tokenizer, WORDS, pooling=pooling, batch_size=3)
    assert emb.vectors.shape == (n + 1, len(WORDS), tiny.facts.hidden_size)
    assert emb.layers == list(range(n + 1))
    for layer in range(n + 1):
        for i, w in enumerate(WORDS):
            ref = reference_embedding(tiny.model, tiny.tokenizer, w, layer, pooling)
            np.testing.assert_allclose(emb.at(layer)[i].numpy(), ref, atol=1e-5)


def test_cosines_match_per_word_loop(tiny):
    emb = embed(tiny.model, tiny.tokenizer, WORDS)
    for layer in (0, 2, tiny.facts.num_layers):
        v = emb.at(layer).numpy()
        for a, b in [(0, 1), (2, 3), (4, 5)]:
            ra = reference_embedding(tiny.model, tiny.tokenizer, WORDS[a], layer, "mean")
            rb = reference_embedding(tiny.model, tiny.tokenizer, WORDS[b], layer, "mean")
            assert float(v[a] @ v[b]) == pytest.approx(float(ra @ rb), abs=1e-5)


def test_vectors_are_unit_length_float32(tiny):
    emb = embed(tiny.model, tiny.tokenizer, WORDS)
    assert emb.vectors.dtype == torch.float32
    np.testing.assert_allclose(emb.vectors.norm(dim=-1).numpy(), 1.0, atol=1e-5)


def test_batched_equals_unbatched(tiny):
    one = embed(tiny.model, tiny.tokenizer, WORDS, batch_size=1)
    many = embed(tiny.model, tiny.tokenizer, WORDS, batch_size=len(WORDS))
    torch.testing.assert_close(one.vectors, many.vectors, atol=1e-5, rtol=0)


def test_packed_rows_equal_the_per_word_loop_for_every_pooling(tiny):
    """Many words share a row (own positions, block-diagonal mask): each still sees only itself."""
    words = WORDS * 3 + ["kichwa", "moyo", "habari"]
    packed = embed_poolings(tiny.model, tiny.tokenizer, words, list(POOLINGS), row_tokens=24)
    assert packed["mean"].stats.forwards == 1
    for pooling, emb in packed.items():
        for layer in (0, 1, tiny.facts.num_layers):
            for i, w in enumerate(words):
                ref = reference_embedding(tiny.model, tiny.tokenizer, w, layer, pooling)
                np.testing.assert_allclose(emb.at(layer)[i].numpy(), ref, atol=1e-5)


def test_packing_covers_every_word_once_within_rows_and_forwards():
    rng = np.random.default_rng(0)
    lengths = [int(x) for x in rng.integers(1, 7, size=500)] + [15, 12, 300]  # short words, phrases, one huge
    rows = pack_rows(lengths, 64)
    flat = [i for row in rows for i in row]
    assert sorted(flat) == list(range(len(lengths)))
    for row in rows:
        assert sum(lengths[i] for i in row) <= 64 or len(row) == 1  # only a word longer than a row stands alone
    padded = sum(64 - sum(lengths[i] for i in row) for row in rows if sum(lengths[i] for i in row) <= 64)
    assert padded < 64 * 2  # first fit leaves at most a sliver in a row or two
    forwards = group_rows(rows, lengths, 1024)
    assert [r for f in forwards for r in f] == rows
    for f in forwards:
        width = max(sum(lengths[i] for i in row) for row in f)
        assert width * len(f) <= 1024 or len(f) == 1


def test_the_default_pairs_need_few_forwards_and_little_padding(tiny):
    from tli_core.pairs import load_default_pairs

    trained, control = load_default_pairs()
    words = list(trained["swahili"]) + list(trained["english"]) + list(control["swahili"]) + list(control["english"])
    tok = tokenise(tiny.tokenizer, words)
    forwards = embeddings_module.plan(tok, tiny.model, n_kept=tiny.facts.num_layers + 1)
    padded = sum(len(f) * max(sum(tok.lengths[i] for i in row) for row in f) for f in forwards)
    assert len(forwards) <= 3 and padded <= 1.05 * sum(tok.lengths)


def test_out_of_memory_splits_the_forward_and_gives_the_same_vectors(tiny, monkeypatch):
    """On CUDA a forward that does not fit is split; simulated here on CPU."""
    expected = embed(tiny.model, tiny.tokenizer, WORDS)
    real = embeddings_module.run_layers
    sizes = []

    def small_memory(model, ids, *args, **kwargs):
        sizes.append(ids.numel())
        if ids.numel() > 20:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real(model, ids, *args, **kwargs)

    monkeypatch.setattr(embeddings_module, "run_layers", small_memory)
    got = embed(tiny.model, tiny.tokenizer, WORDS)
    torch.testing.assert_close(got.vectors, expected.vectors, atol=1e-5, rtol=0)
    failed = [i for i, n in enumerate(sizes) if n > 20]
    assert failed, sizes  # the simulation did bite
    assert all(sizes[i + 1] <= sizes[i] // 2 or sizes[i + 1] <= 20 for i in failed), sizes
    assert got.stats.forwards == sum(n <= 20 for n in sizes)


def test_order_is_the_input_order(tiny):
    fwd = embed(tiny.model, tiny.tokenizer, WORDS, layers=[2])
    rev = embed(tiny.model, tiny.tokenizer, WORDS[::-1], layers=[2])
    torch.testing.assert_close(fwd.at(2), rev.at(2).flip(0), atol=1e-6, rtol=0)


def test_subset_of_layers_equals_all_layers(tiny):
    full = embed(tiny.model, tiny.tokenizer, WORDS)
    part = embed(tiny.model, tiny.tokenizer, WORDS, layers=[1, -1])
    assert part.layers == [1, tiny.facts.num_layers]
    torch.testing.assert_close(part.at(1), full.at(1))
    torch.testing.assert_close(part.at(-1), full.at(tiny.facts.num_layers))


def test_early_exit_runs_only_the_blocks_it_needs(tiny):
    _, blocks, _ = decoder_parts(tiny.model)
    ran = []
    handles = [b.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, b in enumerate(blocks)]
    try:
        embed(tiny.model, tiny.tokenizer, WORDS[:2], layers=[2])
    finally:
        for h in handles:
            h.remove()
    assert sorted(set(ran)) == [0, 1]  # blocks 1 and 2 (0-based modules 0, 1) and nothing deeper


def test_layer_zero_is_the_embedding_table(tiny):
    emb = embed(tiny.model, tiny.tokenizer, ["b"], layers=[0], pooling="last")
    row = tiny.model.get_input_embeddings().weight[tiny.tokenizer.convert_tokens_to_ids("b")]
    np.testing.assert_allclose(emb.at(0)[0].numpy(), (row / row.norm()).detach().numpy(), atol=1e-6)


def test_gradients_flow_through_early_exit(tiny_model_dir):
    from tli_core.models import ModelSpec, load_model

    lm = load_model(ModelSpec(model=str(tiny_model_dir), quantization="fp32", device="cpu"))
    w = lm.model.model.layers[0].self_attn.q_proj.weight
    w.requires_grad_(True)
    tok = tokenise(lm.tokenizer, WORDS[:2])
    ids, mask, weights = make_batch(tok, [0, 1], lm.tokenizer.pad_token_id, "mean")
    out = pooled_hidden_states(lm.model, ids, mask, weights, [1])
    (out[1][0] @ out[1][1]).backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


def test_progress_reports_every_word(tiny):
    seen = []
    embed(tiny.model, tiny.tokenizer, WORDS, batch_size=3, progress=lambda phase, d, t, detail="": seen.append((d, t)))
    assert seen[-1] == (len(WORDS), len(WORDS))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_bad_input_is_refused(tiny):
    with pytest.raises(TLIError, match="outside"):
        embed(tiny.model, tiny.tokenizer, WORDS, layers=[tiny.facts.num_layers + 1])
    with pytest.raises(TLIError, match="pooling"):
        embed(tiny.model, tiny.tokenizer, WORDS, pooling="max")
    with pytest.raises(TLIError, match="no words"):
        embed(tiny.model, tiny.tokenizer, [])


def test_batch_size_chooser_respects_the_budget(tiny):
    seq, kept = 12, tiny.facts.num_layers + 1
    per_word = bytes_per_word(tiny.model.config, seq, kept, 4)
    for budget in (per_word - 1, per_word, 10 * per_word + 5, 10**9):
        bs = choose_batch_size(tiny.model, seq, kept, budget=budget, cap=10**6)
        assert bs >= 1
        assert bs == 1 or bs * per_word <= budget
    assert choose_batch_size(tiny.model, seq, kept, budget=10 * per_word + 5, cap=10**6) == 10
    assert choose_batch_size(tiny.model, seq, kept, budget=10**12, cap=64) == 64


def test_bos_is_marked_special_and_left_out_by_mean_words(tiny):
    tok = tokenise(tiny.tokenizer, ["maji"])
    assert tok.input_ids[0][0] == tiny.tokenizer.bos_token_id and tok.special[0] == [1, 0, 0, 0, 0]
    mean = embed(tiny.model, tiny.tokenizer, ["maji"], layers=[1], pooling="mean").at(1)
    words = embed(tiny.model, tiny.tokenizer, ["maji"], layers=[1], pooling="mean_words").at(1)
    assert not torch.allclose(mean, words)


def test_planned_forwards_stay_within_the_memory_budget_and_give_the_same_vectors(tiny):
    """Whatever the budget, each planned forward's estimated peak (rows x bytes per row of its width) fits it,
    every word is planned once, and the vectors equal those of the one-forward plan."""
    from tli_core.pairs import load_default_pairs

    trained, control = load_default_pairs()
    words = list(dict.fromkeys(list(control["swahili"]) + list(control["english"]) + list(trained["swahili"][:60])))
    tok = tokenise(tiny.tokenizer, words)
    kept, act = tiny.facts.num_layers + 1, 4
    one = embeddings_module.plan(tok, tiny.model, n_kept=kept)
    assert len(one) == 1
    row_tokens = embeddings_module.ROW_TOKENS["cpu"]
    per_row = embeddings_module.bytes_per_row(tiny.model.config, row_tokens, kept, act,
                                              len(words) / sum(len(f) for f in one))
    for rows_allowed in (1, 2, 5):
        budget = rows_allowed * per_row
        forwards = embeddings_module.plan(tok, tiny.model, n_kept=kept, row_tokens=row_tokens // 4, budget=budget)
        assert sorted(i for f in forwards for row in f for i in row) == list(range(len(words)))
        if rows_allowed == 1:
            assert len(forwards) > 1  # the budget bites: the one-forward plan does not fit it
        for f in forwards:
            width = max(sum(tok.lengths[i] for i in row) for row in f)
            estimate = len(f) * embeddings_module.bytes_per_row(tiny.model.config, width, kept, act,
                                                                 len(words) / sum(len(g) for g in forwards))
            assert estimate <= budget or len(f) == 1
    expected = embed(tiny.model, tiny.tokenizer, words)
    small = embed(tiny.model, tiny.tokenizer, words, row_tokens=16)
    assert small.stats.forwards >= 1
    torch.testing.assert_close(small.vectors, expected.vectors, atol=1e-5, rtol=0)


def test_the_sink_pooling_keeps_the_first_position_out_whatever_the_tokenizer(tiny, tiny_model_dir):
    """On a tokenizer that adds no BOS (the demo's), leaving special tokens out removed nothing: mean_words equalled
    mean, and the first word piece -- where the massive activations sit -- stayed in. mean_sink puts a sink token
    before every word and leaves it out."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    from tli_core.embeddings import embed_poolings, sink_note

    no_bos = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    no_bos._tokenizer.post_processor = processors.TemplateProcessing(single="$A", special_tokens=[])
    words = ["maji", "habari za asubuhi", "water"]
    out = embed_poolings(tiny.model, no_bos, words, ["mean", "mean_words", "mean_sink"])
    torch.testing.assert_close(out["mean_words"].vectors, out["mean"].vectors)  # the defect, as it was
    assert not torch.allclose(out["mean_sink"].vectors, out["mean"].vectors)
    bos = no_bos.bos_token_id
    with torch.no_grad():
        for i, w in enumerate(words):  # by hand: BOS, then the word; average the word's positions only
            ids = torch.tensor([[bos] + no_bos(w, add_special_tokens=False)["input_ids"]])
            hs = tiny.model.model(input_ids=ids, output_hidden_states=True).hidden_states
            for k in range(len(hs)):
                ref = torch.nn.functional.normalize(hs[k][0, 1:].float().mean(0), dim=-1)
                torch.testing.assert_close(out["mean_sink"].vectors[k, i], ref, atol=1e-5, rtol=0)
    assert "was placed before every word" in sink_note(no_bos)
    # a tokenizer that adds BOS itself: the sink is its own BOS, the same as mean_words, in one forward
    both = embed_poolings(tiny.model, tiny.tokenizer, words, ["mean_words", "mean_sink"])
    torch.testing.assert_close(both["mean_sink"].vectors, both["mean_words"].vectors)
    assert "own leading" in sink_note(tiny.tokenizer)
