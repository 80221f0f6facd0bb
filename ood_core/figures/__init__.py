"""Plotly figure builders: data in, go.Figure out. Pure, testable without a browser."""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np
import plotly.graph_objects as go

from .. import metrics

ID_COLOUR = "#1f77b4"
OOD_COLOURS = ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


# A log axis labelled once per decade as 10^k: plotly's default labels the 2s and 5s in between with bare
# digits ("0.01 2 5 0.1 2 5 1"), which reads as if the axis went 2, 5, 0.1.
LOG_TICKS = dict(type="log", dtick=1, exponentformat="power", minexponent=0, showexponent="all")


def log_ticks(lo: float, hi: float) -> dict:
    """Axis settings of a log axis over [lo, hi]: LOG_TICKS when it spans a decade or more; within one decade
    plotly already writes full numbers (a 10^k-only axis would have one tick or none)."""
    return dict(LOG_TICKS) if lo > 0 and hi >= 10 * lo else dict(type="log")


def shared_bins(arrays, bins: int = 50) -> np.ndarray:
    """Common bin edges over all arrays, so overlaid histograms are comparable."""
    allv = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays if len(a)])
    lo, hi = float(allv.min()), float(allv.max())
    if hi <= lo:
        hi = lo + 1.0
    return np.linspace(lo, hi, bins + 1)


def score_histogram(id_scores: np.ndarray, ood_scores: Mapping[str, np.ndarray], bins: int = 50,
                    threshold: Optional[float] = None, title: str = "", x_label: str = "unfamiliarity score") -> go.Figure:
    """Overlaid density histograms of ID and each OOD set's scores on shared bin edges."""
    edges = shared_bins([id_scores, *ood_scores.values()], bins)
    centres, width = 0.5 * (edges[:-1] + edges[1:]), float(edges[1] - edges[0])
    fig = go.Figure()
    sets = [("ID (test)", id_scores, ID_COLOUR)] + [
        (name, s, OOD_COLOURS[i % len(OOD_COLOURS)]) for i, (name, s) in enumerate(ood_scores.items())]
    for name, s, colour in sets:
        counts, _ = np.histogram(np.asarray(s, dtype=np.float64), bins=edges)
        density = counts / max(1, counts.sum()) / width
        fig.add_trace(go.Bar(x=centres, y=density, width=width, name=f"{name} (n={len(s)})", marker_color=colour,
                             opacity=0.55, customdata=counts,
                             hovertemplate="score %{x:.4g}<br>density %{y:.3g}<br>count %{customdata}<extra>" + name + "</extra>"))
    if threshold is not None:
        fig.add_vline(x=threshold, line_dash="dash", line_color="black",
                      annotation_text=f"threshold {threshold:.4g}", annotation_position="top")
    fig.update_layout(barmode="overlay", title=title, xaxis_title=x_label + " (higher = more unfamiliar)",
                      yaxis_title="density", legend=dict(orientation="h", y=-0.2), margin=dict(t=50, b=10))
    return fig


def roc_figure(id_scores: np.ndarray, ood_scores: Mapping[str, np.ndarray], title: str = "ROC (OOD positive)") -> go.Figure:
    fig = go.Figure()
    for i, (name, s) in enumerate(ood_scores.items()):
        fpr, tpr, _ = metrics.roc_points(id_scores, s)
        auc = metrics.auroc(id_scores, s)
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{name} (AUROC {100 * auc:.1f}%)",
                                 line=dict(color=OOD_COLOURS[i % len(OOD_COLOURS)])))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line=dict(dash="dot", color="grey")))
    fig.update_layout(title=title, xaxis_title="false positive rate (ID flagged as OOD)",
                      yaxis_title="true positive rate (OOD caught)", xaxis=dict(range=[0, 1]),
                      yaxis=dict(range=[0, 1.02]), legend=dict(orientation="h", y=-0.25), margin=dict(t=50, b=10))
    return fig


def pr_figure(id_scores: np.ndarray, ood_scores: Mapping[str, np.ndarray], title: str = "Precision-recall") -> go.Figure:
    """PR curves with OOD positive (solid, AUPR-Out) and ID positive (dashed, AUPR-In) per OOD set."""
    fig = go.Figure()
    for i, (name, s) in enumerate(ood_scores.items()):
        colour = OOD_COLOURS[i % len(OOD_COLOURS)]
        r, p = metrics.pr_points(id_scores, s, "ood")
        fig.add_trace(go.Scatter(x=r, y=p, mode="lines", line=dict(color=colour),
                                 name=f"{name}, OOD positive (AUPR-Out {100 * metrics.aupr_out(id_scores, s):.1f}%)"))
        r, p = metrics.pr_points(id_scores, s, "id")
        fig.add_trace(go.Scatter(x=r, y=p, mode="lines", line=dict(color=colour, dash="dash"),
                                 name=f"{name}, ID positive (AUPR-In {100 * metrics.aupr_in(id_scores, s):.1f}%)"))
    fig.update_layout(title=title, xaxis_title="recall", yaxis_title="precision", xaxis=dict(range=[0, 1]),
                      yaxis=dict(range=[0, 1.02]), legend=dict(orientation="h", y=-0.25), margin=dict(t=50, b=10))
    return fig


def oscr_figure(id_scores: np.ndarray, id_correct: np.ndarray, ood_scores: Mapping[str, np.ndarray],
                title: str = "Open-set classification rate (OSCR)") -> go.Figure:
    """CCR against FPR (Dhamija et al. 2018) per unknown set, with the closed-set accuracy as the ceiling.

    A known test image counts towards CCR when it is accepted (score <= threshold) and correctly classified.
    """
    correct = np.asarray(id_correct, dtype=bool)
    acc = float(correct.mean()) if len(correct) else 0.0
    fig = go.Figure()
    for i, (name, s) in enumerate(ood_scores.items()):
        fpr, ccr = metrics.oscr_curve(id_scores, correct, s)
        area = metrics.oscr(id_scores, correct, s)
        fig.add_trace(go.Scatter(x=fpr, y=ccr, mode="lines", line=dict(color=OOD_COLOURS[i % len(OOD_COLOURS)]),
                                 name=f"{name} (OSCR {100 * area:.1f}%)", line_shape="hv",
                                 hovertemplate="unknowns accepted %{x:.1%}<br>known correct and accepted %{y:.1%}"))
    fig.add_hline(y=acc, line_dash="dot", line_color="grey",
                  annotation_text=f"closed-set accuracy {100 * acc:.1f}% (the ceiling)", annotation_position="top left")
    fig.update_layout(title=title, xaxis_title="false positive rate (unknowns accepted as known)",
                      yaxis_title="correct classification rate (known: accepted and right)",
                      xaxis=dict(range=[0, 1]), yaxis=dict(range=[0, 1.1]), legend=dict(orientation="h", y=-0.25),
                      margin=dict(t=50, b=10))
    return fig


def training_curve(history: list[dict]) -> go.Figure:
    """Loss (left axis) and train / validation accuracy (right axis) per epoch."""
    ep = [h["epoch"] for h in history]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=ep, y=[h["loss"] for h in history], name="train loss", mode="lines+markers"))
    for key, name in (("train_accuracy", "train accuracy (%)"), ("val_accuracy", "validation accuracy (%)")):
        vals = [h.get(key) for h in history]
        if any(v is not None and np.isfinite(v) for v in vals):  # one-class models have no accuracy
            fig.add_trace(go.Scatter(x=ep, y=[None if v is None or not np.isfinite(v) else 100 * v for v in vals],
                                     name=name, mode="lines+markers", yaxis="y2"))
    fig.update_layout(xaxis_title="epoch", yaxis=dict(title="training loss"),
                      yaxis2=dict(title="accuracy (%)", overlaying="y", side="right", range=[0, 101],
                                  tickmode="linear", tick0=0, dtick=20, showgrid=False),
                      legend=dict(orientation="h", y=-0.3), margin=dict(t=30, b=10), height=320)
    return fig


def image_grid(pixels: np.ndarray, cols: int = 8, title: str = "") -> go.Figure:
    """A grid of grey-scale (or RGB) images in [0, 1] as one image figure (captions belong to the page)."""
    n = len(pixels)
    rows = int(np.ceil(n / cols)) if n else 1
    c, h, w = pixels.shape[1:] if n else (1, 8, 8)
    pad = 1
    canvas = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), dtype=np.float64)
    for i in range(n):
        r, q = divmod(i, cols)
        img = pixels[i]
        img = np.repeat(img, 3, axis=0) if c == 1 else img[:3]
        canvas[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = img.transpose(1, 2, 0)
    fig = go.Figure(go.Image(z=(canvas * 255).astype(np.uint8), hoverinfo="skip"))
    fig.update_layout(title=title, xaxis=dict(visible=False), yaxis=dict(visible=False), margin=dict(l=0, r=0, t=30, b=0))
    return fig


def upscale(pixels: np.ndarray, factor: int = 4) -> list[np.ndarray]:
    """(n, c, h, w) pixels in [0, 1] -> list of uint8 images, enlarged without blur (nearest neighbour)."""
    out = []
    for img in np.asarray(pixels):
        img = np.repeat(np.repeat(img, factor, axis=1), factor, axis=2)
        img = img[0] if img.shape[0] == 1 else img[:3].transpose(1, 2, 0)
        out.append((np.clip(img, 0, 1) * 255).astype(np.uint8))
    return out


def metric_heatmap(detectors: list[str], ood_sets: list[str], mean: np.ndarray, std: Optional[np.ndarray] = None,
                   best: Optional[np.ndarray] = None, metric_label: str = "AUROC",
                   higher_is_better: bool = True) -> go.Figure:
    """Detectors x OOD sets heatmap of a metric in percent; cells show mean (± std), best per column starred."""
    z = 100 * np.asarray(mean, dtype=float)
    text = []
    for i in range(len(detectors)):
        row = []
        for j in range(len(ood_sets)):
            if np.isnan(z[i, j]):
                row.append("error")
                continue
            t = f"{z[i, j]:.1f}"
            if std is not None and not np.isnan(std[i, j]) and std[i, j] > 0:
                t += f"±{100 * std[i, j]:.1f}"
            if best is not None and best[i, j]:
                t = "★" + t
            row.append(t)
        text.append(row)
    scale = "RdYlGn" if higher_is_better else "RdYlGn_r"
    fig = go.Figure(go.Heatmap(z=z, x=ood_sets, y=detectors, text=text, texttemplate="%{text}", colorscale=scale,
                               zmin=0, zmax=100, colorbar=dict(title=f"{metric_label} (%)"),
                               hovertemplate="%{y} on %{x}: %{text}%<extra></extra>"))
    fig.update_layout(xaxis_title="OOD set", yaxis=dict(autorange="reversed", title="detector"),
                      height=max(300, 28 * len(detectors) + 120), margin=dict(t=30, b=10))
    return fig


def sensitivity_figure(rows: list[dict], param: str, log_x: bool = False, metric: str = "auroc",
                       default=None) -> go.Figure:
    """A metric against one parameter's values, one line per OOD set (rows from compare.sweep).

    Numeric values go on a linear or log axis; strings and booleans become categories. The default value
    is marked by a dotted trace (a trace, not a shape: shapes and annotations disagree on log axes).
    """
    categorical = any(isinstance(r["value"], (str, bool, np.bool_)) for r in rows)
    xval = (lambda v: str(v)) if categorical else (lambda v: v)
    fig = go.Figure()
    oods = list(dict.fromkeys(r["ood_set"] for r in rows))
    ys = []
    for i, o in enumerate(oods):
        rs = [r for r in rows if r["ood_set"] == o]
        y = [None if r[metric] is None else 100 * r[metric] for r in rs]
        ys += [v for v in y if v is not None]
        fig.add_trace(go.Scatter(x=[xval(r["value"]) for r in rs], y=y, mode="lines+markers", name=o,
                                 line=dict(color=OOD_COLOURS[i % len(OOD_COLOURS)])))
    if default is not None and ys:
        lo, hi = min(ys), max(ys)
        fig.add_trace(go.Scatter(x=[xval(default)] * 2, y=[lo, hi], mode="lines", name=f"default ({default})",
                                 line=dict(dash="dot", color="grey"), hoverinfo="skip"))
    label = {"auroc": "AUROC (%)", "fpr95": "FPR@95TPR (%)"}.get(metric, metric)
    fig.update_layout(xaxis_title=param, yaxis_title=label,
                      xaxis_type="category" if categorical else ("log" if log_x else "linear"),
                      legend=dict(orientation="h", y=-0.25), margin=dict(t=30, b=10))
    if log_x and not categorical:
        xs = [float(r["value"]) for r in rows if float(r["value"]) > 0]
        if xs:
            fig.update_xaxes(**log_ticks(min(xs), max(xs)))
    return fig


def contamination_figure(summary: list[dict]) -> go.Figure:
    """Mean AUROC (%) over normal classes against the contamination ratio (± sample std), one line per method.

    `summary` rows: {"method", "contamination", "auroc_mean", "auroc_std"} (protocols.summarise_by).
    """
    fig = go.Figure()
    for i, m in enumerate(dict.fromkeys(s["method"] for s in summary)):
        ss = sorted((s for s in summary if s["method"] == m), key=lambda s: s["contamination"])
        fig.add_trace(go.Scatter(
            x=[100 * s["contamination"] for s in ss],
            y=[None if s["auroc_mean"] is None else 100 * s["auroc_mean"] for s in ss],
            error_y=dict(type="data", array=[0 if s["auroc_std"] is None else 100 * s["auroc_std"] for s in ss],
                         thickness=1, width=3),
            mode="lines+markers", name=m, line=dict(color=OOD_COLOURS[i % len(OOD_COLOURS)],
                                                    dash="solid" if i < len(OOD_COLOURS) else "dash")))
    fig.update_layout(title="Robustness to contamination: mean AUROC ± sample std over normal classes",
                      xaxis_title="contamination of the training set (%)", yaxis_title="AUROC (%)",
                      legend=dict(orientation="h", y=-0.25), margin=dict(t=50, b=10))
    return fig


def setting_diagram(setting: str, n_classes: int = 10, known: Optional[list[int]] = None,
                    normal: int = 0, contamination: float = 0.0, class_names: Optional[list[str]] = None,
                    external_unknowns: Optional[str] = None) -> go.Figure:
    """Which classes are seen at training and at test in a setting (after the survey's Fig. 1).

    Two rows of class tiles (training, test); colours say known / normal (ID), unknown / novel (at test only),
    contaminant (AD training); an extra tile stands for other distributions (synthetic / transformed sets).
    `external_unknowns` (OSR only, e.g. "10 CIFAR-100 classes" for CIFAR+10): the unknowns come from another
    dataset, drawn as the extra tile at test; the dataset's own classes that are not known are then not used.
    """
    names = class_names or [str(c) for c in range(n_classes)]
    known = list(range(n_classes)) if setting == "ood" else (known or [])
    colours = {"id": "#1f77b4", "unseen": "#d62728", "contam": "#ff7f0e", "other": "#7f7f7f", "absent": "#eeeeee"}
    fig = go.Figure()
    rows = {"training": 1, "test": 0}
    for row, y in rows.items():
        for c in range(n_classes):
            if setting in ("ood", "osr"):
                kind = "id" if c in known else ("unseen" if row == "test" and not external_unknowns else "absent")
            else:
                kind = "id" if c == normal else ("unseen" if row == "test" else
                                                 ("contam" if setting == "ad" and contamination > 0 else "absent"))
            fig.add_shape(type="rect", x0=c, x1=c + 0.9, y0=y, y1=y + 0.8, line=dict(width=0),
                          fillcolor=colours[kind], opacity=0.6 if kind == "contam" else 1.0)
            fig.add_annotation(x=c + 0.45, y=y + 0.4, text=names[c], showarrow=False,
                               font=dict(color="white" if kind != "absent" else "#999", size=13))
        other = row == "test"
        external = bool(external_unknowns) and setting == "osr"
        fig.add_shape(type="rect", x0=n_classes + 0.3, x1=n_classes + 2.3, y0=y, y1=y + 0.8, line=dict(width=0),
                      fillcolor=(colours["unseen"] if external else colours["other"]) if other else colours["absent"])
        fig.add_annotation(x=n_classes + 1.3, y=y + 0.4, text=(external_unknowns if external else "other data")
                           if other else "—", showarrow=False, font=dict(color="white" if other else "#999", size=11))
    legend = {"ood": [("id", "ID classes"), ("other", "OOD: other distributions")],
              "osr": [("id", "known classes"), ("unseen", "unknown classes (test only" +
                                                        (f": {external_unknowns})" if external_unknowns else ")"))],
              "nd": [("id", "normal class"), ("unseen", "novel classes (test only)")],
              "ad": [("id", "normal class"), ("contam", "unlabelled anomalies in training"),
                     ("unseen", "anomalous classes")]}[setting]
    for kind, label in legend:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=label,
                                 marker=dict(size=12, symbol="square", color=colours[kind])))
    fig.update_layout(xaxis=dict(visible=False, range=[-0.1, n_classes + 2.4]),
                      yaxis=dict(tickvals=[0.4, 1.4], ticktext=["test", "training"], range=[-0.1, 1.9],
                                 showgrid=False, zeroline=False),
                      height=170, margin=dict(l=60, r=10, t=10, b=10), legend=dict(orientation="h", y=-0.1),
                      plot_bgcolor="white")
    return fig
