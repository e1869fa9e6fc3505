"""Model: choose demo / hub id / local path, quantization and device; load once per server; unload."""

import pandas as pd
import streamlit as st

from tli_core.demo import DEMO
from tli_core.errors import TLIError
from tli_core.models import COMPUTE_DTYPES, DEVICES, QUANTIZATIONS, ModelSpec
from ui import state
from ui.models import (
    current_loading,
    current_model,
    default_spec,
    ensure_model,
    loaded_models,
    loading_line,
    spec_key,
    unload_model,
)
from ui.widgets import md, show_error

st.title("Model")
st.caption("Loaded once per server and shared by every page and browser tab; training loads its own copy in a "
           "separate process, so this model is never changed by a run.")

SOURCES = {"Embedded demo (SmolLM2-135M, offline)": "demo", "Hugging Face hub id": "hub", "Local directory": "local"}
try:
    start = default_spec()
except TLIError as exc:  # a bad TLI_DEFAULT_* value: said here, and the form starts from the built-in defaults
    show_error(exc)
    start = ModelSpec()
with st.form("load-model"):
    kind = st.radio("Source", list(SOURCES), horizontal=True,
                    index=0 if start.model == DEMO else (2 if start.model.startswith("/") else 1))
    name = st.text_input("Hub id or local path (ignored for the demo)",
                         value="" if start.model == DEMO else start.model,
                         placeholder="Lugha-Llama/Lugha-Llama-8B-wura  or  /path/to/model")
    c1, c2, c3 = st.columns(3)
    quant = c1.selectbox("Quantization", QUANTIZATIONS, index=QUANTIZATIONS.index(start.quantization),
                         help="nf4: 4-bit NormalFloat via bitsandbytes, as the paper")
    device = c2.selectbox("Device", DEVICES, index=DEVICES.index(start.device),
                          help="auto: every visible GPU (sharded by accelerate), else CPU")
    compute = c3.selectbox("Compute dtype (nf4)", COMPUTE_DTYPES, index=COMPUTE_DTYPES.index(start.compute_dtype),
                           help="the paper: bfloat16. On a CPU without bf16 matrix units float32 is often "
                                "faster, and exact (bench/README.md)")
    with st.expander("Advanced"):
        revision = st.text_input("Revision (branch, tag or commit)", value="")
        max_memory = st.text_input("max_memory for sharding", value="", placeholder="0:20GiB,1:20GiB,cpu:64GiB")
        remote = st.checkbox("Trust remote code", value=False, help="run the model repository's own Python code")
    submitted = st.form_submit_button("Load model", type="primary", icon=":material/download:")

if submitted:
    try:
        source = SOURCES[kind]
        spec = ModelSpec(model=DEMO if source == "demo" else name.strip(), quantization=quant, device=device,
                         compute_dtype=compute, revision=revision.strip() or None, trust_remote_code=remote,
                         max_memory=max_memory.strip() or None)
        lm = ensure_model(spec)
        st.success(f"Loaded {md(lm.facts.name)} in {lm.facts.load_seconds:.1f} s", icon=":material/check_circle:")
    except Exception as exc:
        show_error(exc)

unloaded = state.take_notice("model")
if unloaded:
    st.success(f"Unloaded {md(unloaded)}: its memory is free. To load a model again, choose it above and press "
               f"“Load model”.", icon=":material/eject:")
lm = current_model()
if lm is None:
    if current_loading() is not None and not submitted:
        loading_line()
    elif not unloaded:
        st.info("No model loaded yet.")
    st.stop()

st.subheader(md(lm.facts.name))
facts = pd.DataFrame(lm.facts.rows(), columns=["fact", "value"])
st.table(facts.set_index("fact"))
if lm.facts.quantization in ("nf4", "int8") and lm.facts.quantized_linear_layers == 0:
    st.warning("This model was asked for in 4/8 bits but holds no bitsandbytes layers.")
if not lm.facts.adds_bos:
    st.caption("This tokenizer adds no BOS token: with mean pooling the first word piece plays the attention-sink "
               "role that BOS plays for Llama-3 — see the Artifact diagnostics page.")

others = {k: m for k, m in loaded_models().items()}
if len(others) > 1:
    st.subheader("Models in memory")
    choice = st.radio("Use", list(others), format_func=lambda k: others[k].spec.label(),
                      index=list(others).index(spec_key(lm.spec)))
    if choice != spec_key(lm.spec):
        state.set_model_key(choice)
        st.rerun()

if st.button("Unload this model", icon=":material/eject:",
             help="frees its memory; no page loads it again by itself (load one above when you need it)"):
    unload_model(spec_key(lm.spec))
    state.set_notice("model", lm.spec.label())
    st.rerun()
