"""Figures of the Activations view: per-unit profiles, activation histograms, energy before/after shaping, DICE's
contribution matrix. Data in (the dataclasses of ood_core.activation_stats), plotly figure out."""
from __future__ import annotations

from typing import Optional

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..activation_stats import ID_NAME, EnergyShift, HistogramData, UnitProfile
from . import ID_COLOUR, LOG_TICKS, OOD_COLOURS


def _colour(i: int, name: str) -> str:
    return ID_COLOUR if name == ID_NAME else OOD_COLOURS[(i - 1) % len(OOD_COLOURS)]


def _rgba(hex_colour: str, alpha: float) -> str:
    h = hex_colour.lstrip("#")
    r, g, b = (int(h[i:i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r},{g},{b},{alpha})"


def unit_profile_figure(profile: UnitProfile, sets=None, threshold: Optional[float] = None,
                        title: str = "") -> go.Figure:
    """Per-unit mean activation ± one std (bands), units sorted by ID mean; ID vs each chosen set."""
    names = [s for s in profile.mean if sets is None or s in sets or s == ID_NAME]
    x = np.arange(len(profile.units))
    fig = go.Figure()
    for i, s in enumerate(names):
        col = _colour(i, s)
        m, sd = profile.mean[s], profile.std[s]
        fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([m + sd, (m - sd)[::-1]]),
                                 fill="toself", fillcolor=_rgba(col, 0.15), line=dict(width=0), hoverinfo="skip",
                                 showlegend=False, legendgroup=s))
        fig.add_trace(go.Scatter(x=x, y=m, mode="lines", name=s, line=dict(color=col, width=2 if s == ID_NAME else 1.5),
                                 legendgroup=s, customdata=np.stack([profile.units, sd], axis=1),
                                 hovertemplate="rank %{x}, unit %{customdata[0]}<br>mean %{y:.3g} ± %{customdata[1]:.3g}"
                                               f"<extra>{s}</extra>"))
    if threshold is not None:
        fig.add_hline(y=threshold, line_dash="dash", line_color="black", annotation_text=f"clip c = {threshold:.3g}",
                      annotation_position="top right")
    fig.update_layout(title=title, xaxis_title="unit (sorted by mean ID activation)",
                      yaxis_title="activation (mean ± std)", legend=dict(orientation="h", y=-0.2),
                      margin=dict(t=40 if title else 10, b=10), hovermode="closest")
    return fig


def activation_histogram_figure(hist: HistogramData, threshold: Optional[float] = None,
                                percentile: Optional[float] = None, sets=None, log_y: bool = False,
                                title: str = "") -> go.Figure:
    """Density histograms of all activation values (ID and the chosen OOD sets), with the clip line c.

    Bars are precomputed counts (`activation_histograms`), so only the line moves with the percentile.
    """
    edges = hist.edges
    centres, width = 0.5 * (edges[:-1] + edges[1:]), float(edges[1] - edges[0])
    names = [s for s in hist.counts if sets is None or s in sets or s == ID_NAME]
    fig = go.Figure()
    for i, s in enumerate(names):
        cnt = hist.counts[s]
        dens = cnt / max(1, hist.n_values[s]) / width  # density over all values, zeros included in the total
        fig.add_trace(go.Bar(x=centres, y=dens, width=width, marker_color=_colour(i, s), opacity=0.5,
                             name=f"{s} ({100 * hist.zero_fraction[s]:.0f}% exactly 0, not shown)", customdata=cnt,
                             hovertemplate="activation %{x:.3g}<br>density %{y:.3g}<br>count %{customdata}"
                                           f"<extra>{s}</extra>"))
    if threshold is not None:
        label = f"clip c = {threshold:.3g}" + (f" (p = {percentile:g}th percentile of ID train)" if percentile is not None else "")
        fig.add_vline(x=threshold, line_dash="dash", line_color="black", annotation_text=label,
                      annotation_position="top right")
        if threshold > edges[-1]:
            fig.update_xaxes(range=[edges[0], threshold * 1.05])
    fig.update_layout(barmode="overlay", title=title, xaxis_title="penultimate activation value",
                      yaxis_title="density", yaxis_type="log" if log_y else "linear",
                      legend=dict(orientation="h", y=-0.2), margin=dict(t=40 if title else 10, b=10))
    if log_y:  # densities span decades: one 10^k label per decade
        fig.update_yaxes(**LOG_TICKS)
    return fig


def energy_shift_figure(shift: EnergyShift, sets=None, bins: int = 50, title: str = "") -> go.Figure:
    """Energy histograms before (left) and after (right) shaping, ID vs OOD sets, AUROC in the legend."""
    names = [s for s in shift.ood_before if sets is None or s in sets]
    arrays = [shift.id_before, shift.id_after] + [shift.ood_before[s] for s in names] + [shift.ood_after[s] for s in names]
    allv = np.concatenate([np.asarray(a, dtype=np.float64) for a in arrays if len(a)])
    lo, hi = float(allv.min()), float(allv.max())
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    centres, width = 0.5 * (edges[:-1] + edges[1:]), float(edges[1] - edges[0])
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04,
                        subplot_titles=("before: energy of h",
                                        f"after: {shift.label}" + (f" (c = {shift.threshold:.3g})"
                                                                   if shift.threshold is not None else "")))

    def bar(v, name, colour, col, group, show):
        cnt, _ = np.histogram(np.asarray(v, dtype=np.float64), bins=edges)
        fig.add_trace(go.Bar(x=centres, y=cnt / max(1, cnt.sum()) / width, width=width, name=name,
                             marker_color=colour, opacity=0.5, legendgroup=group, showlegend=show,
                             hovertemplate="energy %{x:.3g}<br>density %{y:.3g}" + f"<extra>{group}</extra>"),
                      row=1, col=col)

    bar(shift.id_before, f"{ID_NAME} (n={len(shift.id_before)})", ID_COLOUR, 1, ID_NAME, True)
    bar(shift.id_after, ID_NAME, ID_COLOUR, 2, ID_NAME, False)
    for i, s in enumerate(names):
        colour = OOD_COLOURS[i % len(OOD_COLOURS)]
        name = f"{s}: AUROC {100 * shift.auroc_before[s]:.1f}% → {100 * shift.auroc_after[s]:.1f}%"
        bar(shift.ood_before[s], name, colour, 1, s, True)
        bar(shift.ood_after[s], s, colour, 2, s, False)
    fig.update_layout(barmode="overlay", title=title, legend=dict(orientation="h", y=-0.25),
                      margin=dict(t=50, b=10))
    fig.update_xaxes(title_text="energy score −logΣexp (higher = more OOD)")
    fig.update_yaxes(title_text="density", row=1, col=1)
    return fig


def dice_contribution_figure(V, mask, class_names=None, unit_order=None, title: str = "") -> go.Figure:
    """DICE's contribution matrix V = W ⊙ mean h (top) and the entries a sparsity percentile keeps (bottom)."""
    V = np.asarray(V, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    order = np.argsort(-V.sum(axis=0), kind="stable") if unit_order is None else np.asarray(unit_order)
    Vs, Ms = V[:, order], mask[:, order]
    rows = [str(c) for c in (class_names if class_names is not None else range(V.shape[0]))]
    lim = float(np.abs(V).max()) or 1.0
    kept = 100.0 * Ms.mean()
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("all contributions V = W ⊙ mean ID activation",
                                        f"kept by DICE: {kept:.1f}% of weights"))
    common = dict(x=np.arange(V.shape[1]), y=rows, colorscale="RdBu_r", zmin=-lim, zmax=lim, customdata=np.tile(order, (V.shape[0], 1)))
    fig.add_trace(go.Heatmap(z=Vs, colorbar=dict(title="V"), hovertemplate="class %{y}, unit %{customdata}<br>V %{z:.3g}<extra></extra>",
                             **common), row=1, col=1)
    fig.add_trace(go.Heatmap(z=np.where(Ms, Vs, np.nan), showscale=False,
                             hovertemplate="class %{y}, unit %{customdata}<br>V %{z:.3g} (kept)<extra></extra>", **common),
                  row=2, col=1)
    fig.update_xaxes(title_text="unit (sorted by total contribution)", row=2, col=1)
    fig.update_yaxes(title_text="class")
    fig.update_layout(title=title, margin=dict(t=50, b=10), height=420, plot_bgcolor="#eeeeee")
    return fig
