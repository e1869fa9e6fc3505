"""Generation probes: greedy answers of the base and the tuned model to translation prompts."""

import streamlit as st

from tli_core.probes import TEMPLATES, probe_scores, run_probes
from tli_core.runs import list_runs
from ui import state
from ui.models import get_pairs, require_model, runs_dir
from ui.widgets import copy_link, download_csv, run_picker, show_error

st.title("Generation probes")
st.caption("The paper's qualitative check: does the tuned model complete “The English word for 'X' is” better? "
           "Greedy decoding, base and tuned side by side. Templates are editable; {word} is replaced by the word.")
lm = require_model()
runs = [r for r in list_runs(runs_dir()) if r.has_weights() and r.model_spec() == lm.spec]
run = run_picker(runs, "Tuned model = base + the trained weights of run", none_label="(none: base model only)")
pairs = get_pairs() if run is None else {"trained": run.pairs("trained"), "control": run.pairs("control")}
# the templates and choices are kept for this browser session (a reload brings back an edited template)
PROBE_FORM = {"sw_en": TEMPLATES["sw→en"], "en_sw": TEMPLATES["en→sw"], "which": "control",
              "words": list(dict.fromkeys(pairs["control"]["swahili"]))[:8], "max_new": 8}
state.init_form("probes", PROBE_FORM, state.checks(which=lambda v: v in ("control", "trained"),
                                                  max_new=lambda v: 1 <= v <= 64), link=("which",))
c1, c2 = st.columns(2)
sw_en = c1.text_input("Swahili → English template", **state.field("probes", "sw_en"))
en_sw = c2.text_input("English → Swahili template", **state.field("probes", "en_sw"))
c1, c2, c3 = st.columns([1, 3, 1])
which = c1.radio("Words from", ["control", "trained"], **state.field("probes", "which", ["control", "trained"]))
pool = pairs[which]
options = list(dict.fromkeys(pool["swahili"]))
wanted = state.form_value("probes", "words") or []
kept = [w for w in wanted if w in options]
if wanted and not kept:  # words of another set or run: this set's first eight (an emptied choice stays empty)
    kept = options[:8]
if kept != wanted:  # only when it must change: a value set by the script each run can overwrite a pick in flight
    state.set_form_value("probes", "words", kept)
chosen = c2.multiselect("Words", options, **state.field("probes", "words"))
max_new = c3.number_input("New tokens", 1, 64, **state.field("probes", "max_new"))
state.save_form("probes", PROBE_FORM, link=("which",))
copy_link("run", "which")
if st.button("Run the probes", type="primary", icon=":material/chat:", disabled=not chosen):
    try:
        subset = pool[pool["swahili"].isin(chosen)].assign(set=which)
        with st.spinner(f"generating {2 * len(subset)} answers per model …"):
            state.results("probes")["table"] = run_probes(lm.model, lm.tokenizer, subset,
                                                    {"sw→en": sw_en, "en→sw": en_sw},
                                                    weights_dir=run.final_weights() if run else None,
                                                    max_new_tokens=int(max_new))
    except Exception as exc:
        show_error(exc)
table = state.results("probes").get("table")
if table is not None:
    cols = st.columns(2 if "tuned" in table else 1)
    cols[0].metric("Base: expected word in the answer", f"{table['base_correct'].mean():.0%}")
    if "tuned" in table:
        diff = round((table["tuned_correct"].mean() - table["base_correct"].mean()) * 100)
        cols[1].metric("Tuned: expected word in the answer", f"{table['tuned_correct'].mean():.0%}",
                       f"{diff:+d} points" if diff else "no change", delta_color="normal" if diff else "off")
    scores = probe_scores(table)
    st.caption("Translation quality of the answers against the expected words (sacrebleu, corpus level): chrF "
               "(character n-grams, robust for single words) and BLEU (effective n-gram order, as answers are one "
               "or two words), per direction and overall.")
    st.dataframe(scores, hide_index=True, width="stretch", column_config={
        "expected word found": st.column_config.NumberColumn(format="percent"),
        "chrF": st.column_config.NumberColumn(format="%.1f"), "BLEU": st.column_config.NumberColumn(format="%.1f")})
    download_csv(scores, "probe_scores.csv", "Download the scores (CSV)", key="dl-probe-scores")
    shown = [c for c in ("direction", "word", "expected", "base", "tuned", "base_correct", "tuned_correct",
                         "base_text", "tuned_text") if c in table]
    st.dataframe(table[shown], hide_index=True, width="stretch")
    download_csv(table, "probes.csv", "Download the probes (CSV)", key="dl-probes")
