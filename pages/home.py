"""Home: what TLI is, where the experiment stands, and the path through the pages."""

import streamlit as st

from tli_core.runs import list_runs
from ui.models import current_loading, current_model, get_pairs, runs_dir
from ui.widgets import md

st.title("TLI Studio")
st.markdown(
    "**Targeted Lexical Injection** ([arXiv 2506.15415](https://arxiv.org/abs/2506.15415)) finds the early layer "
    "where a model already aligns Swahili and English words, then trains small LoRA adapters with a contrastive "
    "loss on that layer's word embeddings so the alignment carries through to the output. This studio reproduces "
    "the paper step by step, and shows the evidence needed to trust each number.")

lm = current_model()
pairs = get_pairs()
runs = list_runs(runs_dir())
c1, c2, c3 = st.columns(3)
c1.metric("Model", md(lm.facts.name.split(" (")[0]) if lm else "loading …" if current_loading() else "not loaded",
          f"{lm.facts.num_layers} blocks · {lm.facts.quantization}" if lm else None, delta_color="off")
c2.metric("Word pairs", f"{len(pairs['trained'])} + {len(pairs['control'])}", "trained + control", delta_color="off")
c3.metric("Runs", len(runs), f"{sum(r.status().get('state') == 'done' for r in runs)} done", delta_color="off")

st.subheader("Quick start")
steps = [
    ("pages/model.py", "1 · Model", "load the model in 4-bit NF4 (the paper: Lugha-Llama-8B-wura; here by default the "
                                     "embedded SmolLM2-135M demo)"),
    ("pages/pairs.py", "2 · Word pairs", "check the trained and control sets, or upload your own"),
    ("pages/scan.py", "3 · Layer scan", "similarity of translation pairs at every layer, next to shuffled pairs and "
                                        "retrieval, to choose the target layer"),
    ("pages/train.py", "4 · Train", "launch TLI with the paper's settings (or your own) and watch it live"),
    ("pages/compare.py", "5 · Compare", "before/after distributions and paired tests for trained and control words"),
]
for page, label, text in steps:
    a, b = st.columns([1, 4])
    a.page_link(page, label=label)
    b.caption(text)

st.subheader("Two facts about the method this tool makes visible")
st.info(
    "**Layer 2 trains only blocks 1–2.** `hidden_states[2]` depends only on the first two decoder blocks, so a loss "
    "on it reaches only their adapters; LoRA in later blocks stays exactly zero. Training therefore stops the "
    "forward after the target layer (early exit), and each run records which blocks received gradient.",
    icon=":material/layers:")
st.warning(
    "**A cosine near 1 is not alignment by itself.** Mean pooling that includes BOS / first-token states lets a few "
    "massive activations dominate: on a real Llama-architecture model, shuffled non-translation pairs reach ~0.9999 "
    "in middle layers too, and nearest-neighbour retrieval is at chance. Every similarity here is shown beside its "
    "shuffled-pair baseline and a retrieval score (precision@k).", icon=":material/warning:")
st.caption("Layer numbering everywhere: 0 = input embeddings, k = output of decoder block k, "
           "L = output of the last block after the final norm (Hugging Face's `hidden_states[k]`).")
