"""A run, handed on: one self-contained HTML report, and a ZIP bundle around it.

The HTML file carries everything a collaborator needs to read the result without the tool:
the interactive Plotly figures (plotly.js inlined once, so it opens offline in any browser),
the config and its resolution, each evaluation protocol with its statistics, the shuffled
baseline and retrieval, the word-by-word table, the model and environment facts, and the word
sets' names and hashes. The bundle adds the CSV tables, every figure as SVG and PNG (rendered by
kaleido with a local Chromium, when one is installed), the benchmarks and the trained weights.
"""

from __future__ import annotations

import html
import io
import json
import math
import platform
import re
import sys
import time
import zipfile
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from . import __version__
from .downstream import downstream_table
from .errors import TLIError
from .evaluation import TABLES, protocols_side_by_side
from .evidence import evidence_table, layer_choice_note, run_verdict
from .figures import (
    before_after_curve_figure,
    distribution_figure,
    downstream_figure,
    loss_figure,
    scatter_figure,
    similarity_figure,
)
from .files import csv_bytes, read_json_checked
from .models import package_versions
from .pairs import pairs_hash
from .protocols import PROTOCOLS
from .runs import Run
from .stats import STAT_LABELS
from .sweeps import cell_view

FIGURE_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "svg", "scale": 2}}
_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;
line-height:1.45;padding:0 1rem}h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;
margin-top:2.2rem}table{border-collapse:collapse;font-size:.85rem;margin:.6rem 0}th,td{border:1px solid #ddd;
padding:.25rem .5rem;text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
.note{color:#555;font-size:.9rem}.grid{display:grid;grid-template-columns:1fr 1fr;gap:1rem}
pre{background:#f7f7f7;padding:.7rem;overflow:auto;font-size:.8rem}.words{max-height:480px;overflow:auto}
.wide{overflow-x:auto}
"""


def run_figures(run: Run) -> dict[str, go.Figure]:
    """The run's figures, by a file-safe name: training curves, and per protocol the distributions and curves."""
    figs: dict[str, go.Figure] = {}
    metrics = run.metrics()
    if not metrics.empty:
        figs["training-loss"] = loss_figure(metrics)
        figs["training-similarities"] = similarity_figure(metrics)
    targets = run.config_dict().get("target_layers")
    for protocol in run.protocols():
        summary = run.summary(protocol) or run.summary()
        pairs, curve = run.table("pairs", protocol), run.table("curve", protocol)
        if pairs is None or curve is None:
            continue
        for group in dict.fromkeys(pairs["set"]):
            named = {"distribution": distribution_figure(pairs, group), "pairs": scatter_figure(pairs, group),
                     "layer-curve": before_after_curve_figure(curve, group, summary["eval_layer"], targets)}
            for kind, fig in named.items():  # half the page wide: the protocol on a line of its own
                fig.update_layout(title={"text": fig.layout.title.text, "subtitle": {"text": f"protocol {protocol}"},
                                         "font": {"size": 15}}, margin={"t": 90})
                figs[f"{protocol}__{group}-{kind}"] = fig
    downstream = run.downstream_summary()
    if downstream:
        figs["downstream-benchmarks"] = downstream_figure(downstream)
    return figs


_P_COLUMN = re.compile(r"(^|[ _])p($|[ (])")  # p, p corrected, p (paired t), control raw p, … (not P@1, pairs)


def _cell(fmt: str):
    """A cell as text: a float in ``fmt``, nothing for a missing value (never "NaN" or "None"), anything else as is."""
    def show(v) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return fmt.format(v) if isinstance(v, float) else str(v)
    return show


def _table(df: pd.DataFrame, floats: str = "{:.4f}") -> str:
    formatters = {c: _cell(floats) for c in df.columns if df[c].dtype.kind in "fO"}
    for c in df.columns:
        if _P_COLUMN.search(str(c)) or str(c) in ("p_holm", "wilcoxon_p"):  # "p corrected" too, as on the pages
            formatters[c] = _cell("{:.3g}")
        elif "% change" in str(c) or str(c) == "pct_change":  # percent units: 0.4252 is +0.43 %, not 42 %
            formatters[c] = _cell("{:+.2f} %")
    return df.to_html(index=False, escape=True, formatters=formatters, border=0, na_rep="")


def _esc(value) -> str:
    return html.escape(str(value))


def build_report(run: Run) -> str:
    """The self-contained HTML report of ``run``."""
    summary = run.summary() or {}
    status, meta, cfg = run.status(), run.meta(), run.config_dict()
    facts = read_json_checked(run.path / "model_facts.json", {}, dict)[0]
    figs = run_figures(run)
    parts = [f"<h1>TLI run {_esc(meta.get('name') or run.id)}</h1>",
             f"<p class=note>run id {_esc(run.id)} · created {_esc(status.get('created'))} · state "
             f"{_esc(status.get('state'))} · report written {time.strftime('%Y-%m-%d %H:%M')} by TLI Studio "
             f"{__version__} · layers: 0 = input embeddings, k = output of decoder block k, L = final output</p>"]
    if meta.get("notes"):
        parts.append(f"<p><b>Notes:</b> {_esc(meta['notes'])}</p>")
    sets = status.get("pairs") or {}
    if not sets:  # a run created before sets were recorded: name them from its own copies
        for role in ("trained", "control"):
            try:
                df = run.pairs(role)
                sets[role] = {"name": Path(str(cfg.get(f"{role}_pairs", ""))).name, "hash": pairs_hash(df),
                              "rows": len(df)}
            except TLIError:
                pass
    parts.append("<h2>What was trained and evaluated</h2><table><tr><th>set</th><th>file</th><th>hash</th>"
                 "<th>pairs</th></tr>" + "".join(
                     f"<tr><td>{_esc(k)}</td><td>{_esc(v.get('name'))}</td><td>{_esc(v.get('hash'))}</td>"
                     f"<td>{_esc(v.get('rows'))}</td></tr>" for k, v in sets.items() if isinstance(v, dict))
                 + "</table>")
    if facts:
        parts.append(f"<p class=note>Model {_esc(facts.get('name'))} ({_esc(facts.get('architecture'))}, "
                     f"{_esc(facts.get('num_layers'))} blocks, {_esc(facts.get('quantization'))}, compute "
                     f"{_esc(facts.get('compute_dtype'))}, device {_esc(facts.get('device'))}).</p>")
    protocols = run.protocols()
    if protocols:
        parts += conclusion(run, protocols[0], summary, cfg)
        summaries = {p: (run.summary(p) or summary) for p in protocols}
        parts.append("<h2>Results under each evaluation protocol</h2>")
        parts.append("<ul>" + "".join(
            f"<li><b>{_esc(p)}</b>: {_esc(summaries[p].get('protocol_description') or 'as recorded')}" + (
                "<br><span class=note>" + _esc("; ".join(PROTOCOLS[p].reasons)) + ".</span>" if p in PROTOCOLS
                else "") + "</li>" for p in protocols) + "</ul>")
        parts.append(f"<div class=wide>{_table(protocols_side_by_side(summaries))}</div>")
        for p in protocols:
            s = summaries[p]
            stats = pd.DataFrame(list(s["groups"].values()))
            stats = stats[[c for c in STAT_LABELS if c in stats]].rename(columns=STAT_LABELS)
            parts.append(f"<h2>Protocol {_esc(p)}: layer {_esc(s['eval_layer'])} ({_esc(s.get('eval_layer_name'))}), "
                         f"pooling {_esc(s['pooling'])}, analysis precision {_esc(s.get('precision'))}</h2>")
            if any(isinstance(g, dict) and g.get("specific") for g in s["groups"].values()):
                parts.append("<p class=note>The specific effect and the retrieval change, then the paper's raw "
                             "change:</p>" + _table(evidence_table(s["groups"])))
            parts.append("<p class=note>Raw change, the paper's statistics (pair-level t-test as published; CI "
                         "resampling Swahili headwords):</p>" + _table(stats))
            grid = [n for n in figs if n.startswith(f"{p}__")]
            parts.append("<div class=grid>" + "".join(_figure(figs[n]) for n in grid) + "</div>")
        headline = protocols[0]
        words = run.table("pairs", headline)
        if words is not None:
            parts.append(f"<h2>Word by word ({_esc(headline)}, layer {_esc(summary.get('eval_layer'))})</h2>"
                         f"<div class=words>{_table(words.sort_values('change', ascending=False))}</div>")
    downstream = run.downstream_summary()
    if downstream:
        limit = downstream.get("limit")
        parts.append(f"<h2>Downstream benchmarks: base vs tuned</h2><p class=note>lm-evaluation-harness, "
                     f"{_esc(downstream.get('num_fewshot', 0))}-shot, "
                     + (f"the first {_esc(limit)} items of each task" if limit else "all items")
                     + f", weights {_esc(downstream.get('weights'))}. {_esc(downstream.get('test', ''))}.</p>"
                     + _table(downstream_table(downstream)) + _figure(figs["downstream-benchmarks"]))
    train = [n for n in figs if n.startswith("training-")]
    if train:
        parts.append("<h2>Training</h2><div class=grid>" + "".join(_figure(figs[n]) for n in train) + "</div>")
    env = {"TLI Studio": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
           **package_versions(), **{f"run: {k}": v for k, v in (status.get("versions") or {}).items()}}
    resolved = json.dumps(status.get("resolved"), indent=1)
    parts.append("<h2>Settings and environment</h2><p class=note>config.json as saved (symbolic settings are "
                 "resolved per model at run time: see 'resolved')</p>"
                 f"<pre>{_esc(json.dumps(cfg, indent=1))}</pre><pre>{_esc(resolved)}</pre><table>"
                 + "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in env.items()) + "</table>")
    return ("<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>TLI run "
            f"{_esc(run.id)}</title><style>{_STYLE}</style><script>{get_plotlyjs()}</script></head><body>"
            + "\n".join(parts) + "</body></html>")


def conclusion(run: Run, protocol: str, summary: dict, cfg: dict) -> list[str]:
    """What the run shows, as a reviewer asks it: per set the verdict, the specific effect and retrieval first, the
    raw change labelled raw; the seeds and placebo of its cell; how the target layer was chosen."""
    s = run.summary(protocol) or summary
    parts = [f"<h2>Conclusion ({_esc(protocol)} protocol, layer {_esc(s.get('eval_layer'))})</h2>",
             f"<p class=note>{_esc(layer_choice_note(cfg, s.get('eval_layer'), s.get('eval_layer')))}</p>"]
    view = cell_view(run, protocol)
    groups = s.get("groups") or {}
    if view is not None:
        row = view["row"]
        parts.append(f"<p>This run is one of {len(view['units'])} runs of cell {view['cell']} of sweep "
                     f"{_esc(view['sweep'])} ({int(row['seeds'])} seed(s), {int(row['placebo'])} placebo run(s)); "
                     f"p-values corrected across its {view['cells']} cell(s) ({_esc(view['correction'].upper())}).</p>"
                     "<ul>" + "".join(f"<li><b>{_esc(g)}</b>: {_esc(row[col])}" + (" ★" if g == "control" and
                                                                                   row["★"] else "") + "</li>"
                                      for g, col in (("control", "verdict"), ("trained", "trained verdict")))
                     + "</ul>")
        parts.append("<p class=note>Each run of the cell (TLI and placebo, per seed):</p>" + _table(view["units"]))
    else:
        parts.append("<ul>" + "".join(f"<li><b>{_esc(g)}</b>: {_esc(run_verdict(grp).text)}</li>"
                                      for g, grp in groups.items() if isinstance(grp, dict)) + "</ul>"
                     "<p class=note>One run: a result can be confirmed (★) only across two or more seeds and beyond a "
                     "placebo run (train --seeds 1,2,3 --placebo).</p>")
    if any(isinstance(g, dict) and g.get("specific") for g in groups.values()):
        parts.append(_table(evidence_table(groups)))
    return parts


def _figure(fig: go.Figure) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, config=FIGURE_CONFIG)


# --------------------------------------------------------------------------- static images

_KALEIDO = {"started": False}


def static_images_available() -> bool:
    """Whether figures can be rendered to SVG/PNG here (kaleido drives a local Chrome/Chromium)."""
    try:
        from choreographer.browsers.chromium import Chromium

        return bool(Chromium.find_browser(skip_local=False))
    except Exception:  # kaleido/choreographer missing, or an unexpected layout: no static images
        return False


def figure_images(figs: dict[str, go.Figure]) -> dict[str, bytes]:
    """``name.svg`` and ``name.png`` for every figure (a persistent kaleido renderer, started once)."""
    import kaleido

    if not _KALEIDO["started"]:
        kaleido.start_sync_server(mathjax=False, silence_warnings=True)
        _KALEIDO["started"] = True
    out = {}
    for name, fig in figs.items():
        out[f"{name}.svg"] = fig.to_image(format="svg")
        out[f"{name}.png"] = fig.to_image(format="png", scale=2)
    return out


def build_bundle(run: Run) -> bytes:
    """A ZIP: report.html, the CSV tables, config and summary, benchmarks, figures as SVG and PNG, the trained
    weights (the adapter, or the fine-tuned blocks)."""
    buf = io.BytesIO()
    root = run.id
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{root}/report.html", build_report(run))
        for name in ("config.json", "summary.json", "status.json", "model_facts.json", "meta.json"):
            if (run.path / name).is_file():
                zf.write(run.path / name, f"{root}/{name}")
        for protocol in run.protocols():
            for table in TABLES:
                df = run.table(table, protocol)
                if df is not None:
                    zf.writestr(f"{root}/tables/{protocol}/{table}.csv", csv_bytes(df))
        metrics = run.metrics()
        if not metrics.empty:
            zf.writestr(f"{root}/tables/metrics.csv", csv_bytes(metrics))
        downstream = run.downstream_summary()
        if downstream:
            zf.writestr(f"{root}/tables/downstream.csv", csv_bytes(downstream_table(downstream)))
            for name in ("summary.json", "items.csv"):
                if (run.path / "downstream" / name).is_file():
                    zf.write(run.path / "downstream" / name, f"{root}/downstream/{name}")
        figs = run_figures(run)
        if static_images_available():
            for name, data in figure_images(figs).items():
                zf.writestr(f"{root}/figures/{name}", data)
        else:
            zf.writestr(f"{root}/figures/README.txt",
                        "SVG/PNG figures need a local Chrome or Chromium (kaleido renders with it); none was found "
                        "where this bundle was made. Every figure is interactive in report.html, and its camera "
                        "button downloads it as SVG.\n")
        final = run.final_weights()
        for f in sorted(final.rglob("*")) if final else []:
            if f.is_file():
                zf.write(f, f"{root}/{final.name}/{f.relative_to(final)}")
    return buf.getvalue()
