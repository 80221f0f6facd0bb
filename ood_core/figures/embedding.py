"""The Embeddings view's scatter: one trace per set or class (or a continuous score colour), with the
customdata that `embedding.select_samples` reads back from a lasso or click selection."""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from ..embedding import METHOD_TITLES, OOD_LABEL
from . import ID_COLOUR, OOD_COLOURS

COLOR_BY = ("set", "label", "pred", "score")
# marker symbols: ID sets are circles, each OOD set gets its own other symbol
ID_SYMBOL = "circle"
OOD_SYMBOLS = ["square", "diamond", "cross", "x", "triangle-up", "star", "triangle-down", "pentagon",
               "hexagon", "star-diamond", "hourglass", "bowtie"]
CLASS_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                 "#bcbd22", "#17becf"]
OOD_GREY = "#555555"
# the colour bar sits in the lower part of the right margin, its title running along it, so the legend of the
# set symbols (top right) never covers the title
SCORE_COLORBAR = dict(len=0.6, y=0, yanchor="bottom")

def _symbols(frame: pd.DataFrame) -> dict[str, str]:
    out, k = {}, 0
    for s, kind in dict(zip(frame["set"], frame["kind"])).items():
        if kind == "ID":
            out[s] = ID_SYMBOL
        else:
            out[s] = OOD_SYMBOLS[k % len(OOD_SYMBOLS)]
            k += 1
    return out


def _set_colours(frame: pd.DataFrame) -> dict[str, str]:
    out, k = {}, 0
    for s, kind in dict(zip(frame["set"], frame["kind"])).items():
        if kind == "ID":
            out[s] = ID_COLOUR
        else:
            out[s] = OOD_COLOURS[k % len(OOD_COLOURS)]
            k += 1
    return out


def _scores_for_frame(frame: pd.DataFrame, scores) -> np.ndarray:
    if isinstance(scores, Mapping):
        missing = [s for s in frame["set"].unique() if s not in scores]
        if missing:
            raise ValueError(f"scores missing for set(s) {', '.join(missing)}")
        v = np.array([float(np.asarray(scores[s])[i]) for s, i in zip(frame["set"], frame["index"])])
    else:
        v = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(v) != len(frame):
            raise ValueError(f"scores have {len(v)} values for {len(frame)} points")
    return v


def embedding_figure(frame: pd.DataFrame, xy, color_by: str = "set", scores=None, score_name: str = "score",
                     method: str = "", title: str = "", marker_size: int = 7) -> go.Figure:
    """Scatter of an embedding: colour by "set", "label" (true class, OOD grey), "pred" or "score".

    One trace per set / class (legend toggles them); with "score", one trace with a continuous colour
    scale (`scores`: an array aligned with the frame, or {set: full score array} indexed by frame["index"];
    higher = more unfamiliar). ID points are circles, each OOD set has its own symbol.
    customdata = (set, index, label_name, pred_name, confidence) for `select_samples` and the hover.
    Drag mode is zoom: Streamlit turns a click into a point selection only when the drag mode is not lasso or
    box select (it sets clickmode "event" then); lasso and box select stay in the mode bar.
    """
    if color_by not in COLOR_BY:
        raise ValueError(f"color_by must be one of {', '.join(COLOR_BY)}, got {color_by!r}")
    xy = np.asarray(xy, dtype=np.float64)
    if xy.shape != (len(frame), 2):
        raise ValueError(f"coordinates have shape {xy.shape}, expected ({len(frame)}, 2)")
    sym = _symbols(frame)
    n = len(frame)
    Scatter = go.Scattergl if n > 5000 else go.Scatter
    cd_all = np.empty((n, 5), dtype=object)
    cd_all[:, 0] = frame["set"].to_numpy()
    cd_all[:, 1] = frame["index"].to_numpy().astype(int)
    cd_all[:, 2] = frame["label_name"].to_numpy()
    cd_all[:, 3] = frame["pred_name"].to_numpy()
    cd_all[:, 4] = np.round(frame["confidence"].to_numpy().astype(float), 3)
    hover = ("set %{customdata[0]} #%{customdata[1]}<br>label %{customdata[2]}<br>"
             "prediction %{customdata[3]} (confidence %{customdata[4]})")
    fig = go.Figure()
    if color_by == "score":
        if scores is None:
            raise ValueError("color_by='score' needs scores")
        v = _scores_for_frame(frame, scores)
        fig.add_trace(Scatter(
            x=xy[:, 0], y=xy[:, 1], mode="markers", name=score_name, customdata=cd_all, showlegend=False,
            marker=dict(color=v, colorscale="Viridis", size=marker_size, colorbar=SCORE_COLORBAR | dict(title=dict(text=score_name, side="right")),
                        symbol=[sym[s] for s in frame["set"]], line=dict(width=0.3, color="white")),
            text=[f"{x:.4g}" for x in v],
            hovertemplate=hover + f"<br>{score_name} " + "%{text}<extra></extra>"))
        # legend entries for the symbols only
        for s, symbol in sym.items():
            fig.add_trace(Scatter(x=[None], y=[None], mode="markers", name=s,
                                  marker=dict(symbol=symbol, color="grey", size=marker_size)))
    else:
        if color_by == "set":
            groups = list(dict.fromkeys(frame["set"]))
            key = frame["set"].to_numpy()
            colours = _set_colours(frame)
        else:
            col = "label" if color_by == "label" else "pred"
            name_col = "label_name" if color_by == "label" else "pred_name"
            order = frame[[col, name_col]].drop_duplicates().sort_values(col)
            groups = list(order[name_col])
            key = frame[name_col].to_numpy()
            colours = {}
            for c, nm in zip(order[col], order[name_col]):
                colours[nm] = OOD_GREY if c < 0 else CLASS_COLOURS[int(c) % len(CLASS_COLOURS)]
        for g in groups:
            m = key == g
            label = "true class" if color_by == "label" else "predicted"
            gname = g if color_by == "set" else (g if g == OOD_LABEL else f"{label} {g}")
            fig.add_trace(Scatter(
                x=xy[m, 0], y=xy[m, 1], mode="markers", name=f"{gname} ({int(m.sum())})", customdata=cd_all[m],
                marker=dict(color=colours[g], size=marker_size, symbol=[sym[s] for s in frame["set"][m]],
                            line=dict(width=0.3, color="white"), opacity=0.85),
                hovertemplate=hover + "<extra></extra>"))
    name = METHOD_TITLES.get(method, method)
    fig.update_layout(title=title, dragmode="zoom", xaxis_title=f"{name} 1".strip(),
                      yaxis_title=f"{name} 2".strip(), legend=dict(itemsizing="constant"),
                      margin=dict(t=40 if title else 10, b=10), hovermode="closest")
    return fig
