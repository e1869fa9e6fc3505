"""Plotly figures for the dashboard (and for anyone scripting the core): no Streamlit here.

Every figure labels layers with the one convention (0 = input embeddings ... L = final
output) and puts the evidence next to the claim: the shuffled baseline beside the true-pair
cosine, the chance level beside retrieval, y = x beside a before/after scatter.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

COLORS = {"true": "#1f77b4", "shuffled": "#7f7f7f", "gap": "#2ca02c", "before": "#8c8c8c", "after": "#d62728",
          "trained": "#1f77b4", "control": "#ff7f0e", "swahili": "#2ca02c", "english": "#9467bd"}
RETRIEVAL = [("p1_nn", "P@1 NN", "solid"), ("p5_nn", "P@5 NN", "dot"), ("p1_csls", "P@1 CSLS", "solid"),
             ("p5_csls", "P@5 CSLS", "dot")]
PLOT_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}
NUMBERS = {"tickformat": ".3~g", "exponentformat": "none"}  # 0.0005, not Plotly's SI "500µ"


def _layer_axis(fig, num_layers: int | None = None, row=None, col=None):
    title = "layer (0 = input embeddings" + (f", {num_layers} = final output)" if num_layers else ")")
    n = num_layers or 0
    fig.update_xaxes(title_text=title, tickmode="linear", tick0=0, dtick=1 if n <= 16 else 2 if n <= 40 else 4,
                     tickangle=0, range=[-0.5, n + 0.5] if n else None, row=row, col=col)


def _retrieval_range(values: list[float]) -> list[float]:
    """A P@k axis scaled to the data (values are often a few %), with the chance level always on it."""
    top = max([v for v in values if np.isfinite(v)] + [0.0])
    return [0, min(1.02, max(top * 1.25, 0.01))]


def _band(fig, x, mean, std, color, name, row=1, col=1):
    x = list(x)
    upper, lower = list(mean + std), list(mean - std)
    fig.add_trace(go.Scatter(x=x + x[::-1], y=upper + lower[::-1], fill="toself", fillcolor=color,
                             opacity=0.15, line={"width": 0}, hoverinfo="skip", showlegend=False,
                             name=f"{name} ± std"), row=row, col=col)


def flag_layers(fig: go.Figure, flagged: list[int] | None, precision: str | None = None) -> go.Figure:
    """Shade layers whose per-pair values exceed the precision bound, with a legend entry saying why."""
    for k in flagged or []:
        fig.add_vrect(x0=k - 0.5, x1=k + 0.5, fillcolor="#ffb000", opacity=0.18, line_width=0, layer="below")
    if flagged:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", marker={"symbol": "square", "size": 12,
                                                                             "color": "#ffb000", "opacity": 0.5},
                                 name=f"⚠ per-pair values move > 1e-3 ({precision or 'this precision'})"))
    return fig


def curve_figure(curve: pd.DataFrame, set_name: str = "trained", title: str | None = None,
                 flagged: list[int] | None = None, precision: str | None = None) -> go.Figure:
    """Layer scan: true-pair cosine (± std) vs shuffled baseline and gap; retrieval P@k vs chance."""
    df = curve[curve["set"] == set_name].sort_values("layer")
    n_layers = int(df["layer"].max())
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.58, 0.42],
                        specs=[[{"secondary_y": True}], [{}]],
                        subplot_titles=("cosine of translation pairs vs shuffled pairs",
                                        "retrieval over the pair pool (Swahili → English)"))
    x = df["layer"]
    _band(fig, x, df["true_mean"], df["true_std"], COLORS["true"], "true pairs")
    _band(fig, x, df["shuffled_mean"], df["shuffled_std"], COLORS["shuffled"], "shuffled pairs")
    hover = df["layer_name"]
    fig.add_trace(go.Scatter(x=x, y=df["true_mean"], name="true pairs (mean ± std)", mode="lines+markers",
                             line={"color": COLORS["true"]}, customdata=hover,
                             hovertemplate="layer %{x} (%{customdata}): %{y:.5f}<extra>true pairs</extra>"), 1, 1)
    fig.add_trace(go.Scatter(x=x, y=df["shuffled_mean"], name="shuffled pairs (baseline)", mode="lines+markers",
                             line={"color": COLORS["shuffled"], "dash": "dash"}, customdata=hover,
                             hovertemplate="layer %{x} (%{customdata}): %{y:.5f}<extra>shuffled</extra>"), 1, 1)
    fig.add_trace(go.Scatter(x=x, y=df["gap"], name="gap = true − shuffled (right axis)", mode="lines",
                             line={"color": COLORS["gap"], "width": 3},
                             hovertemplate="layer %{x}: gap %{y:+.5f}<extra></extra>"), 1, 1, secondary_y=True)
    for col, label, dash in RETRIEVAL:
        color = COLORS["true"] if "nn" in col else COLORS["gap"]
        fig.add_trace(go.Scatter(x=x, y=df[col], name=label, mode="lines+markers",
                                 line={"color": color, "dash": dash},
                                 hovertemplate=f"layer %{{x}}: {label} %{{y:.3f}}<extra></extra>"), 2, 1)
    for k, dash in ((1, "solid"), (5, "dot")):
        fig.add_trace(go.Scatter(x=x, y=df[f"chance_p{k}"], name=f"chance P@{k}", mode="lines",
                                 line={"color": "black", "dash": dash, "width": 1}), 2, 1)
    fig.update_yaxes(title_text="mean cosine", row=1, col=1, **NUMBERS)
    # its own ticks at round values (synced to the cosine axis' grid they read 0.0214, 0.0119, …)
    fig.update_yaxes(title_text="gap", row=1, col=1, secondary_y=True, showgrid=False, zeroline=True, tickmode="auto",
                     nticks=6, **NUMBERS)
    values = [v for col, _, _ in RETRIEVAL for v in df[col]] + list(df["chance_p1"]) + list(df["chance_p5"])
    fig.update_yaxes(title_text="precision (axis fitted to the data)", range=_retrieval_range(values), row=2, col=1,
                     **NUMBERS)
    _layer_axis(fig, n_layers, row=2, col=1)
    flag_layers(fig, flagged, precision)
    fig.update_layout(height=640, title=title or f"Layer scan — {set_name} set ({int(df['n'].iloc[0])} pairs)"
                      + (f", {precision} analysis" if precision else ""),
                      legend={"orientation": "h", "y": -0.12}, hovermode="x unified", margin={"t": 70})
    return fig


def mark_layers(fig: go.Figure, marks: dict[str, int]) -> go.Figure:
    """Vertical lines at chosen layers, e.g. {'raw-cosine peak': 12, 'gap peak': 2}, named in the legend
    (annotations on multi-panel figures collide with the panel titles)."""
    styles = ["dash", "dot", "dashdot", "longdash"]
    for i, (label, layer) in enumerate(marks.items()):
        style = {"dash": styles[i % len(styles)], "color": "#444", "width": 1.5}
        fig.add_vline(x=layer, line=style, opacity=0.7)
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=style, name=f"{label}: layer {layer}"))
    return fig


def mark_gap_peak(fig: go.Figure, boot: dict) -> go.Figure:
    """The gap peak on a scan's curve: its 95% CI (headword bootstrap) as an error bar on the gap axis, and the layers
    not distinguishable from it shaded."""
    for k in boot["tied"]:
        if k != boot["best"]:
            fig.add_vrect(x0=k - 0.5, x1=k + 0.5, fillcolor=COLORS["gap"], opacity=0.10, line_width=0, layer="below",
                          row=1, col=1)
    i = boot["layers"].index(boot["best"])
    lo, hi = boot["ci_low"][i], boot["ci_high"][i]
    fig.add_trace(go.Scatter(x=[boot["best"]], y=[boot["gap"][i]], mode="markers",
                             marker={"color": COLORS["gap"], "size": 11, "symbol": "diamond"},
                             error_y={"type": "data", "symmetric": False, "array": [hi - boot["gap"][i]],
                                      "arrayminus": [boot["gap"][i] - lo], "color": COLORS["gap"], "thickness": 2},
                             name=f"largest gap: layer {boot['best']} (95% CI, headword bootstrap); shaded: layers "
                                  f"not distinguishable from it",
                             hovertemplate="layer %{x}: gap %{y:+.5f}<extra>95% CI " + f"{lo:+.5f} … {hi:+.5f}"
                                           + "</extra>"), 1, 1, secondary_y=True)
    return fig


def heatmap_figure(pairs: pd.DataFrame, set_name: str | None = None, max_words: int = 120,
                   flagged: list[int] | None = None) -> go.Figure:
    """Each pair's cosine at each layer (rows: pairs, columns: layers); flagged layers' ticks carry ⚠."""
    df = pairs if set_name is None else pairs[pairs["set"] == set_name]
    cols = [c for c in df.columns if c.startswith("layer_")]
    df = df.head(max_words)
    labels = (df["swahili"] + " – " + df["english"]).tolist()
    z = df[cols].to_numpy()
    fig = go.Figure(go.Heatmap(z=z, x=[int(c.split("_")[1]) for c in cols], y=labels, colorscale="Viridis",
                               colorbar={"title": "cosine"},
                               hovertemplate="%{y}<br>layer %{x}: %{z:.4f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", tickfont={"size": 9})
    layers = [int(c.split("_")[1]) for c in cols]
    _layer_axis(fig, layers[-1])
    if flagged:
        fig.update_xaxes(tickvals=layers, ticktext=[f"{k}⚠" if k in flagged else str(k) for k in layers])
    fig.update_layout(height=max(300, 14 * len(labels) + 120),
                      title=f"Cosine per word pair and layer ({len(labels)} pairs shown)"
                      + (f"; ⚠ = per-pair error above 1e-3 at layers {', '.join(map(str, flagged))}" if flagged
                         else ""))
    return fig


def loss_figure(metrics: pd.DataFrame, log_y: bool = False) -> go.Figure:
    fig = go.Figure()
    if not metrics.empty:
        fig.add_trace(go.Scatter(x=metrics["step"], y=metrics["loss"], name="loss", mode="lines",
                                 line={"color": COLORS["after"], "width": 1}, opacity=0.5))
        smooth = metrics["loss"].rolling(max(1, len(metrics) // 30), min_periods=1).mean()
        fig.add_trace(go.Scatter(x=metrics["step"], y=smooth, name="loss (moving average)", mode="lines",
                                 line={"color": COLORS["after"], "width": 3}))
    fig.update_layout(title="Training loss", xaxis_title="step", yaxis_title="loss", height=340,
                      yaxis_type="log" if log_y else "linear", legend={"orientation": "h", "y": -0.25})
    return fig


def similarity_figure(metrics: pd.DataFrame) -> go.Figure:
    """Mean positive similarity and mean hardest-negative similarity per step (the triplet's two sides)."""
    fig = go.Figure()
    if not metrics.empty:
        fig.add_trace(go.Scatter(x=metrics["step"], y=metrics["pos_sim"], name="positive (translation)",
                                 line={"color": COLORS["true"]}))
        fig.add_trace(go.Scatter(x=metrics["step"], y=metrics["neg_sim"], name="hardest in-batch negative",
                                 line={"color": COLORS["shuffled"], "dash": "dash"}))
    fig.update_layout(title="Target-layer similarities during training", xaxis_title="step",
                      yaxis_title="cosine", height=340, legend={"orientation": "h", "y": -0.25})
    return fig


def robust_range(values: np.ndarray, low: float = 0.5, high: float = 99.5, margin: float = 0.05) -> tuple[float, float]:
    """An axis range a few outliers do not squash: the 0.5–99.5 percentiles widened by 5 % each side, or out to the
    data's end where that lies within a quarter of the span (a tail is drawn, only far outliers are left out).
    Values outside it are counted and marked, not drawn."""
    values = values[np.isfinite(values)]
    vmin, vmax = float(values.min()), float(values.max())
    lo, hi = (float(x) for x in np.percentile(values, [low, high]))
    span = hi - lo if hi > lo else max(abs(hi), 1e-6) * 1e-2
    lo = vmin if vmin >= lo - span / 4 else lo - margin * span
    hi = vmax if vmax <= hi + span / 4 else hi + margin * span
    return lo, hi


def fd_bins(values: np.ndarray, max_bins: int = 80, span: tuple[float, float] | None = None) -> dict:
    """Histogram bins by the Freedman–Diaconis rule (2 IQR / n^(1/3)) over ``span`` (default: the data's range),
    shared by before and after."""
    values = values[np.isfinite(values)]
    lo, hi = span or (float(values.min()), float(values.max()))
    iqr = float(np.subtract(*np.percentile(values, [75, 25])))
    width = 2 * iqr / len(values) ** (1 / 3) if iqr > 0 else 0.0
    if width <= 0 or hi <= lo:
        width = max(hi - lo, 1e-6) / 10
    width = max(width, (hi - lo) / max_bins)
    return {"start": lo, "end": hi + width, "size": width}


def _beyond(fig: go.Figure, df: pd.DataFrame, columns: dict[str, str], lo: float, hi: float) -> None:
    """Values outside the drawn range: a triangle at each edge, and the counts in the legend (never an annotation
    that could collide)."""
    below = {label: int((df[col] < lo).sum()) for col, label in columns.items()}
    above = {label: int((df[col] > hi).sum()) for col, label in columns.items()}
    if not any(below.values()) and not any(above.values()):
        return
    parts = [f"{label} {below[label]} below {lo:.3g}, {above[label]} above {hi:.3g}" for label in columns.values()]
    xs = ([lo] if any(below.values()) else []) + ([hi] if any(above.values()) else [])
    symbols = (["triangle-left"] if any(below.values()) else []) + (["triangle-right"] if any(above.values()) else [])
    fig.add_trace(go.Scatter(x=xs, y=[0] * len(xs), mode="markers", name="outside the axis: " + "; ".join(parts),
                             marker={"symbol": symbols, "size": 12, "color": "#444"}, cliponaxis=False,
                             hovertemplate="values beyond this edge are counted in the legend<extra></extra>"))


def distribution_figure(pairs: pd.DataFrame, set_name: str, kind: str = "histogram",
                        before: str = "before", after: str = "after") -> go.Figure:
    df = pairs[pairs["set"] == set_name] if "set" in pairs else pairs
    fig = go.Figure()
    values = np.concatenate([df[before].to_numpy(float), df[after].to_numpy(float)])
    span = robust_range(values)
    bins = fd_bins(values[(values >= span[0]) & (values <= span[1])], span=span)
    for col, label in ((before, "before"), (after, "after")):
        if kind == "violin":
            fig.add_trace(go.Violin(y=df[col], name=label, box_visible=True, meanline_visible=True,
                                    line_color=COLORS[label], points="outliers"))
        else:
            fig.add_trace(go.Histogram(x=df[col], name=label, opacity=0.55, marker_color=COLORS[label],
                                       xbins=bins, autobinx=False))
    if kind == "violin":
        fig.update_layout(yaxis_title="cosine")
        fig.update_yaxes(**NUMBERS)
    else:
        fig.update_layout(barmode="overlay", yaxis_title="pairs",
                          xaxis_title="cosine (bins: Freedman–Diaconis; far outliers counted in the legend)")
        fig.update_xaxes(range=[span[0] - bins["size"] / 2, span[1] + bins["size"]], **NUMBERS)
        for col, label in ((before, "before"), (after, "after")):  # means in the legend: labels never collide
            mean = float(df[col].mean())
            fig.add_vline(x=mean, line_color=COLORS[label], line_dash="dash")
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=f"mean {label} {mean:.4f}",
                                     line={"color": COLORS[label], "dash": "dash"}))
        _beyond(fig, df, {before: "before", after: "after"}, *span)
    fig.update_layout(title=f"{set_name}: similarity before vs after (n = {len(df)})", height=380,
                      legend={"orientation": "h", "y": -0.3})
    return fig


def ecdf_figure(pairs: pd.DataFrame, set_name: str, before: str = "before", after: str = "after") -> go.Figure:
    df = pairs[pairs["set"] == set_name] if "set" in pairs else pairs
    fig = go.Figure()
    for col, label in ((before, "before"), (after, "after")):
        x = np.sort(df[col].to_numpy())
        fig.add_trace(go.Scatter(x=x, y=np.arange(1, len(x) + 1) / len(x), name=label, mode="lines",
                                 line={"color": COLORS[label], "shape": "hv"}))
    fig.update_layout(title=f"{set_name}: ECDF", xaxis_title="cosine", yaxis_title="fraction of pairs ≤ x",
                      height=360, legend={"orientation": "h", "y": -0.2})
    return fig


def scatter_figure(pairs: pd.DataFrame, set_name: str, before: str = "before", after: str = "after") -> go.Figure:
    df = pairs[pairs["set"] == set_name] if "set" in pairs else pairs
    text = (df["swahili"] + " – " + df["english"]) if {"swahili", "english"} <= set(df) else None
    lo = float(min(df[before].min(), df[after].min()))
    hi = float(max(df[before].max(), df[after].max()))
    up = int((df[after] > df[before]).sum())
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="y = x (no change)",
                             line={"color": "black", "dash": "dash", "width": 1}))
    fig.add_trace(go.Scatter(x=df[before], y=df[after], mode="markers", name="pairs", text=text,
                             marker={"color": COLORS.get(set_name, COLORS["after"]), "size": 6, "opacity": 0.7},
                             hovertemplate="%{text}<br>before %{x:.4f} → after %{y:.4f}<extra></extra>"))
    fig.update_layout(title=f"{set_name}: each pair before vs after ({up} of {len(df)} above y = x)",
                      xaxis_title="before", yaxis_title="after", height=380, showlegend=False)
    return fig


def before_after_curve_figure(curve: pd.DataFrame, set_name: str, eval_layer: int | None = None,
                              target_layers: list[int] | None = None) -> go.Figure:
    """The whole layer curve before vs after training, each with its shuffled baseline."""
    df = curve[curve["set"] == set_name]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1, row_heights=[0.6, 0.4],
                        subplot_titles=("cosine: true pairs and shuffled baseline", "P@1 (CSLS)"))
    for phase in ("before", "after"):
        d = df[df["phase"] == phase].sort_values("layer")
        c = COLORS[phase]
        fig.add_trace(go.Scatter(x=d["layer"], y=d["true_mean"], name=f"{phase}: true pairs", line={"color": c},
                                 mode="lines+markers"), 1, 1)
        fig.add_trace(go.Scatter(x=d["layer"], y=d["shuffled_mean"], name=f"{phase}: shuffled",
                                 line={"color": c, "dash": "dash"}), 1, 1)
        fig.add_trace(go.Scatter(x=d["layer"], y=d["p1_csls"], name=f"{phase}: P@1 CSLS", line={"color": c},
                                 showlegend=False), 2, 1)
    chance = df[df["phase"] == "before"].sort_values("layer")
    fig.add_trace(go.Scatter(x=chance["layer"], y=chance["chance_p1"], name="chance P@1",
                             line={"color": "black", "width": 1, "dash": "dot"}), 2, 1)
    marks = {}
    if eval_layer is not None:
        marks["evaluation layer"] = eval_layer
    for k in target_layers or []:
        marks[f"target {k}"] = k
    mark_layers(fig, marks)
    n = int(df["layer"].max())
    _layer_axis(fig, n, row=1, col=1)
    _layer_axis(fig, n, row=2, col=1)
    fig.update_xaxes(title_text="", row=1, col=1)
    fig.update_yaxes(row=1, col=1, **NUMBERS)
    fig.update_yaxes(title_text="P@1", row=2, col=1, range=_retrieval_range(list(df["p1_csls"]) +
                                                                            list(df["chance_p1"])), **NUMBERS)
    fig.update_layout(title=f"{set_name}: layer curve before vs after", height=540,
                      legend={"orientation": "h", "y": -0.18}, hovermode="x unified")
    return fig


def runs_curve_figure(curves: pd.DataFrame, set_name: str, labels: dict[str, str] | None = None) -> go.Figure:
    """Several runs' layer curves on one plot: before (dashed) and after (solid) true-pair cosine per run, and the
    gap over the shuffled baseline below."""
    df = curves[curves["set"] == set_name]
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1, row_heights=[0.6, 0.4],
                        subplot_titles=("true-pair cosine (dashed: before, solid: after)",
                                        "gap over the shuffled baseline"))
    for i, (run, d) in enumerate(df.groupby("run", sort=False)):
        # a run's name is user text; Plotly renders <a href> (and <b>, <br>) in trace names, so it goes in escaped
        color, name = palette[i % len(palette)], html.escape(str((labels or {}).get(run, run)))
        for phase, dash in (("before", "dash"), ("after", "solid")):
            p = d[d["phase"] == phase].sort_values("layer")
            fig.add_trace(go.Scatter(x=p["layer"], y=p["true_mean"], mode="lines", name=f"{name}: {phase}",
                                     line={"color": color, "dash": dash}, legendgroup=run), 1, 1)
            fig.add_trace(go.Scatter(x=p["layer"], y=p["gap"], mode="lines", showlegend=False, legendgroup=run,
                                     line={"color": color, "dash": dash}, name=f"{name}: gap {phase}"), 2, 1)
    n = int(df["layer"].max()) if not df.empty else 0
    _layer_axis(fig, n, row=2, col=1)
    fig.update_yaxes(**NUMBERS)
    fig.update_layout(title=f"{set_name}: the runs' layer curves", height=540, hovermode="x unified",
                      legend={"orientation": "h", "y": -0.18})
    return fig


def sweep_heatmap(results: pd.DataFrame, value: str = "control specific Δ", best: int | None = None,
                  title: str | None = None) -> go.Figure:
    """Grid of cells: rows = target layer(s) x placement, columns = LoRA rank (then full fine-tuning); text = value
    and its corrected p; ★ only on a cell whose effect is confirmed (``evidence``), outlined when it is ``best``."""
    df = results.copy()
    df["row"] = "layer " + df["target layers"].astype(str) + " · " + df["placement"].astype(str)
    methods = df["method"] if "method" in df else pd.Series("lora", index=df.index)
    df["column"] = [("full FT" if m == "full" else f"r={int(r)}") for m, r in zip(methods, df["rank"], strict=True)]
    rows = list(dict.fromkeys(df["row"]))
    ranks = sorted({c for c in df["column"] if c != "full FT"}, key=lambda c: int(c[2:])) + (
        ["full FT"] if (df["column"] == "full FT").any() else [])
    z = np.full((len(rows), len(ranks)), np.nan)
    text = [["" for _ in ranks] for _ in rows]
    group = value.split(" ")[0]
    p_col = f"{group} specific p corrected" if value.endswith("specific Δ") else None
    starred = "★" in df and value == "control specific Δ"
    for _, r in df.iterrows():
        i, j = rows.index(r["row"]), ranks.index(r["column"])
        z[i, j] = r[value]
        if not np.isfinite(r[value]):
            text[i][j] = str(r["state"])
        elif p_col and p_col in df and np.isfinite(r[p_col]):
            star = " ★" if starred and bool(r["★"]) else ""
            text[i][j] = f"{r[value]:+.4f}{star}<br>p={r[p_col]:.2g}"
        else:
            text[i][j] = f"{r[value]:+.4f}"
    limit = np.nanmax(np.abs(z)) if np.isfinite(z).any() else 1.0
    fig = go.Figure(go.Heatmap(z=z, x=ranks, y=rows, text=text, texttemplate="%{text}",
                               colorscale="RdBu", zmid=0, zmin=-limit, zmax=limit,
                               colorbar={"title": value},
                               hovertemplate="%{y}, %{x}<br>" + value + " %{z:+.4f}<extra></extra>"))
    if best is not None and best in set(df["cell"]):
        r = df[df["cell"] == best].iloc[0]
        i, j = rows.index(r["row"]), ranks.index(r["column"])
        fig.add_shape(type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5,
                      line={"color": "gold", "width": 4})
    correction = results.attrs.get("correction", "bh")
    what = ("specific Δ = change of cos(sw, en) minus that to sw's non-translations" if p_col else value)
    # one short line each: the figure is often drawn at half the page's width, where a long subtitle is clipped
    fig.update_layout(title=title or f"{value} per cell<br><sup>{what};<br>p {correction.upper()}-corrected across "
                                     f"cells; ★ = confirmed (specific, beyond seeds and placebo)</sup>",
                      height=max(380, 200 + 70 * len(rows)), xaxis_title="LoRA rank, or full fine-tuning",
                      yaxis_title="target layer · placement", margin={"t": 110})
    fig.update_traces(colorbar={"len": 1.0, "thickness": 14, "tickformat": ".3~g", "exponentformat": "none",
                                "title": {"side": "right"}})
    fig.update_yaxes(autorange="reversed")
    return fig


def activation_figure(report: pd.DataFrame) -> go.Figure:
    """Per layer: first-token vs other-token norms, and the largest |activation| over the median."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("hidden-state norm: first token vs the others",
                                                        "largest |activation| / median |activation|"))
    x = report["layer"]
    fig.add_trace(go.Scatter(x=x, y=report["first_token_norm"], name="first token (BOS / first piece)",
                             line={"color": COLORS["after"]}), 1, 1)
    fig.add_trace(go.Scatter(x=x, y=report["other_tokens_norm"], name="other tokens (mean)",
                             line={"color": COLORS["true"]}), 1, 1)
    fig.add_trace(go.Bar(x=x, y=report["max_to_median_ratio"], name="max / median", marker_color=COLORS["gap"],
                         customdata=report["top_dims"],
                         hovertemplate="layer %{x}: %{y:.0f}x, top dims %{customdata}<extra></extra>"), 1, 2)
    fig.update_yaxes(type="log", dtick=1, title_text="L2 norm", row=1, col=1)
    fig.update_yaxes(type="log", dtick=1, title_text="ratio", row=1, col=2)
    _layer_axis(fig, int(x.max()), row=1, col=1)
    _layer_axis(fig, int(x.max()), row=1, col=2)
    fig.update_layout(height=380, legend={"orientation": "h", "y": -0.25})
    return fig


def variants_figure(curves: pd.DataFrame, set_name: str = "trained") -> go.Figure:
    """True-pair and shuffled-pair cosine per layer for each way of pooling (artifacts in or out)."""
    df = curves[curves["set"] == set_name]
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    fig = go.Figure()
    for i, (name, d) in enumerate(df.groupby("variant", sort=False)):
        d = d.sort_values("layer")
        c = palette[i % len(palette)]
        fig.add_trace(go.Scatter(x=d["layer"], y=d["true_mean"], name=f"{name}: true pairs", line={"color": c}))
        fig.add_trace(go.Scatter(x=d["layer"], y=d["shuffled_mean"], name=f"{name}: shuffled",
                                 line={"color": c, "dash": "dash"}))
    _layer_axis(fig, int(df["layer"].max()))
    fig.update_layout(title=f"{set_name}: the scan with the artifacts in and out", yaxis_title="mean cosine",
                      height=440, legend={"orientation": "h", "y": -0.2}, hovermode="x unified")
    return fig


def embedding_map_figure(points: pd.DataFrame, title: str = "Embedding map") -> go.Figure:
    """2-D map: one panel per phase, Swahili and English coloured, trained/control by symbol, pairs joined."""
    phases = list(dict.fromkeys(points["phase"]))
    fig = make_subplots(rows=1, cols=len(phases), subplot_titles=phases, horizontal_spacing=0.05,
                        shared_xaxes=True, shared_yaxes=True)
    for j, phase in enumerate(phases, 1):
        d = points[points["phase"] == phase]
        sw, en = d[d["language"] == "swahili"].set_index("pair"), d[d["language"] == "english"].set_index("pair")
        common = sw.index.intersection(en.index)
        xs, ys = [], []
        for p in common:
            xs += [sw.at[p, "x"], en.at[p, "x"], None]
            ys += [sw.at[p, "y"], en.at[p, "y"], None]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": "#bbbbbb", "width": 0.7},
                                 hoverinfo="skip", showlegend=j == 1, name="translation pair"), 1, j)
        for lang in ("swahili", "english"):
            for set_name, symbol in (("trained", "circle"), ("control", "diamond")):
                s = d[(d["language"] == lang) & (d["set"] == set_name)]
                if s.empty:
                    continue
                fig.add_trace(go.Scatter(
                    x=s["x"], y=s["y"], mode="markers", name=f"{lang} · {set_name}", showlegend=j == 1,
                    marker={"color": COLORS[lang], "symbol": symbol, "size": 7 if set_name == "trained" else 9,
                            "line": {"width": 0.5, "color": "white"}},
                    customdata=np.stack([s["word"], s["partner"]], axis=-1),
                    hovertemplate="%{customdata[0]} (↔ %{customdata[1]})<extra>" + f"{lang}, {set_name}</extra>"),
                    1, j)
    # one joint projection: both panels on the same axes, so a point's move is a move on the page
    pad = 0.05
    xr, yr = points["x"].agg(["min", "max"]), points["y"].agg(["min", "max"])
    dx, dy = (xr["max"] - xr["min"]) * pad or 1.0, (yr["max"] - yr["min"]) * pad or 1.0
    fig.update_xaxes(showticklabels=False, range=[xr["min"] - dx, xr["max"] + dx])
    fig.update_yaxes(showticklabels=False, range=[yr["min"] - dy, yr["max"] + dy])
    fig.update_layout(title=title, height=620, legend={"orientation": "h", "y": -0.05})
    return fig


def downstream_figure(summary: dict) -> go.Figure:
    """Per task: accuracy of the base and the tuned model with bootstrap 95% CIs (left), and the paired change
    with its CI and McNemar's p (right; a CI crossing 0 is no evidence of a change)."""
    results = summary["results"]
    tasks = list(results)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.58, 0.42], horizontal_spacing=0.14,
                        subplot_titles=("accuracy (95% bootstrap CI)", "change tuned − base (paired 95% CI)"))
    for phase, key, ci in (("base", "acc_base", "acc_base_ci"), ("tuned", "acc_tuned", "acc_tuned_ci")):
        y = [results[t][key] for t in tasks]
        lo = [results[t][key] - results[t][ci][0] for t in tasks]
        hi = [results[t][ci][1] - results[t][key] for t in tasks]
        fig.add_trace(go.Bar(x=tasks, y=y, name=f"{phase} model", marker_color=COLORS["before" if phase == "base"
                                                                                         else "after"],
                             error_y={"type": "data", "symmetric": False, "array": hi, "arrayminus": lo},
                             hovertemplate="%{x}<br>" + phase + " accuracy %{y:.3f}<extra></extra>"), row=1, col=1)
    change = [results[t]["change"] for t in tasks]
    fig.add_trace(go.Scatter(
        x=tasks, y=change, mode="markers", name="change", marker={"size": 10, "color": "#333"},
        error_y={"type": "data", "symmetric": False,
                 "array": [results[t]["ci_high"] - results[t]["change"] for t in tasks],
                 "arrayminus": [results[t]["change"] - results[t]["ci_low"] for t in tasks]},
        customdata=[[results[t]["p_mcnemar"], results[t]["lost"], results[t]["gained"], results[t]["n"]]
                    for t in tasks],
        hovertemplate="%{x}<br>change %{y:+.3f}<br>McNemar p=%{customdata[0]:.3g}<br>lost %{customdata[1]}, "
                      "gained %{customdata[2]} of %{customdata[3]} items<extra></extra>"), row=1, col=2)
    fig.add_hline(y=0, line={"color": "#999", "dash": "dot"}, row=1, col=2)
    for t in tasks:
        fig.add_annotation(x=t, y=results[t]["ci_high"], text=f"p={results[t]['p_mcnemar']:.2g}", showarrow=False,
                           yanchor="bottom", yshift=4, font={"size": 11}, row=1, col=2)
    chance = summary.get("chance") or {}
    for t in tasks:
        if t in chance:
            fig.add_trace(go.Scatter(x=[t], y=[chance[t]], mode="markers", showlegend=t == tasks[0],
                                     marker={"symbol": "line-ew-open", "size": 28, "color": "#555"},
                                     name="chance"), row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], title_text="accuracy", row=1, col=1, **NUMBERS)
    span = max([abs(results[t][k]) for t in tasks for k in ("ci_low", "ci_high")] + [0.01]) * 1.3
    fig.update_yaxes(title_text="accuracy change", range=[-span, span], row=1, col=2, **NUMBERS)
    shots = summary.get("num_fewshot", 0)
    limit = summary.get("limit")
    fig.update_layout(title=f"Downstream benchmarks, {shots}-shot" + (f", first {limit} items per task" if limit
                                                                         else "") + ": base vs tuned",
                      barmode="group", height=440, legend={"orientation": "h", "y": -0.2})
    return fig
