"""How a result's conclusion is shown: the verdict in words, the specific effect and the retrieval change first,
the paper's raw change labelled raw with the shuffled change beside it, and the seeds and placebo of its cell.

A green arrow or a star appears only where ``tli_core.evidence`` says the improvement is confirmed."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from tli_core.evidence import Verdict, evidence_table, run_verdict

from .widgets import download_csv, md, plot

BOX = {"confirmed": st.success, "unconfirmed": st.info, "unknown": st.caption}


def _p(x) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.3g}"


def verdict_box(set_name: str, verdict: Verdict | dict) -> None:
    """One line per set: ★ and green only for a confirmed improvement, otherwise the verdict in words."""
    v = verdict if isinstance(verdict, Verdict) else Verdict(verdict["level"], verdict["text"],
                                                            list(verdict.get("missing") or []))
    show = BOX.get(v.level, st.warning)
    text = f"**{md(set_name)}**: {md(v.text)}"
    if v.level == "unknown":
        st.caption(text)
    else:
        show(text, icon=":material/star:" if v.star else ":material/info:" if v.level == "unconfirmed"
             else ":material/report:")


def evidence_metrics(groups: dict[str, dict], stars: dict[str, bool], correction: str = "Holm over layers") -> None:
    """Per set: the specific effect, hit@1 (CSLS) before → after, and the raw cosine (the paper's), in that order."""
    cols = st.columns(len(groups))
    for col, (name, g) in zip(cols, groups.items(), strict=True):
        with col:
            st.markdown(f"##### {md(name)} (n = {g['n']} pairs"
                        + (f", {g['specific']['n_units']} headwords)" if g.get("specific") else ")"))
            s = g.get("specific")
            color = "normal" if stars.get(name) else "off"  # green only when confirmed
            if s:
                st.metric("Specific effect (vs non-translations)",
                          f"{s['spec_before']:.4f} → {s['spec_after']:.4f}",
                          f"{s['change']:+.4f} · p ({correction}) {_p(s.get('p_holm', s.get('p')))}",
                          delta_color=color,
                          help="specificity = cos(Swahili, its translation) − the same Swahili word's mean cosine to "
                               "the pool's English words that are none of its translations; its change is the part "
                               "of the raw change that non-translations do not share. Headword-level t-test, CI "
                               "resampling headwords.")
            r = (g.get("retrieval") or {}).get("hit1_csls")
            if r:
                st.metric("hit@1, CSLS (every gold translation counts)", f"{r['before']:.1%} → {r['after']:.1%}",
                          f"{r['change']:+.1%} · McNemar p {_p(r['p'])} ({r['gained']} gained, {r['lost']} lost)",
                          delta_color=color)
            st.metric("Raw cosine (the paper's measure)", f"{g['mean_before']:.4f} → {g['mean_after']:.4f}",
                      f"raw {g['pct_change']:+.2f} % · p (paired t) {_p(g['p'])}", delta_color="off")
            shuffled = (g.get("shuffled_mean_after", np.nan) - g.get("shuffled_mean_before", np.nan))
            nontrans = (s or {}).get("nontrans_change")
            st.caption("Beside the raw change: shuffled pairs moved "
                       + (f"{shuffled:+.4f}" if np.isfinite(shuffled) else "–")
                       + (f", the same words' non-translations {nontrans:+.4f}" if nontrans is not None else "")
                       + ". A rise they share is not alignment.")


def show_evidence(groups: dict[str, dict], key: str, stars: dict[str, bool] | None = None,
                  verdicts: dict[str, Verdict] | None = None) -> None:
    """Verdicts, metrics, then the full table (with its CSV) of one run's sets at one layer."""
    if not any(g.get("specific") for g in groups.values()):
        st.warning("This run was evaluated before the specific effect and the retrieval change were measured: its "
                   "numbers below are the raw change only. Evaluate it again (Runs page, or "
                   "`python -m tli_core evaluate --run …`) to see whether the change is specific to translations.",
                   icon=":material/history:")
    verdicts = verdicts or {name: run_verdict(g) for name, g in groups.items()}
    stars = stars or {name: v.star for name, v in verdicts.items()}
    for name in groups:
        verdict_box(name, verdicts[name])
    evidence_metrics(groups, stars)
    table = evidence_table(groups)
    fmt = {c: "{:.4f}" for c in ("before", "after", "change", "CI low", "CI high")} | {"p": "{:.3g}",
                                                                                       "p corrected": "{:.3g}"}
    st.table(table.style.format(fmt, na_rep="–").hide(axis="index"))
    download_csv(table, f"evidence_{key}.csv", "Download these statistics (CSV)", key=f"dl-evidence-{key}")


def cell_panel(view: dict, key: str) -> None:
    """The run's cell: its seeds (each seed's specific effect, their mean and CI) and its placebo (TLI − placebo)."""
    row, units = view["row"], view["units"]
    st.subheader(f"Across seeds and against the placebo: cell {view['cell']} of sweep {md(view['sweep'])}")
    for g in ("control", "trained"):
        verdict_box(f"{g}, over {int(row['seeds'])} seed(s)", {"level": row["level" if g == "control" else
                                                                            "trained level"],
                                                               "text": row["verdict" if g == "control" else
                                                                           "trained verdict"]})
    c1, c2, c3 = st.columns(3)
    c1.metric("control specific Δ, mean over seeds", f"{row['control specific Δ']:+.4f}",
              f"95% CI {row['control specific CI low']:+.4f} … {row['control specific CI high']:+.4f}"
              if np.isfinite(row["control specific CI low"]) else "one seed: no spread", delta_color="off")
    c2.metric("TLI − placebo (control)", f"{row['control TLI − placebo']:+.4f}"
              if np.isfinite(row["control TLI − placebo"]) else "no placebo",
              f"p {_p(row['control TLI − placebo p'])}" if np.isfinite(row["control TLI − placebo"]) else None,
              delta_color="off")
    c3.metric("p judging it", _p(row["control specific p corrected"]), row["control p basis"], delta_color="off")
    st.caption(f"p-values corrected across the sweep's {view['cells']} cell(s) ({view['correction'].upper()}); with "
               f"two or more seeds the seeds are the replicates (a one-sample t over their effects), and the placebo "
               f"contrast is a difference-in-differences of the specific effect, per seed.")
    fig = go.Figure()
    for arm, color in (("tli", "#1f77b4"), ("placebo", "#999999")):
        part = units[(units["arm"] == arm) & units["control specific Δ"].notna()]
        if len(part):
            fig.add_trace(go.Scatter(x=part["seed"].astype(str), y=part["control specific Δ"], mode="markers",
                                     marker={"size": 12, "color": color}, name="TLI" if arm == "tli" else "placebo"))
    fig.add_hline(y=0, line_dash="dot", line_color="#888")
    fig.update_layout(title="control specific Δ per seed", xaxis_title="seed", yaxis_title="specific Δ",
                      height=320, legend={"orientation": "h", "y": -0.3})
    plot(fig, key=f"seeds-{key}", source=f"sweep {view['sweep']} · cell {view['cell']}")
    st.dataframe(units, hide_index=True, width="stretch")
    download_csv(units, f"cell_{view['sweep']}_{view['cell']}.csv", "Download the cell's runs (CSV)",
                 key=f"dl-cell-{key}")
