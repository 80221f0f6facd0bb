"""Known-answer tests of the "seeing why" library parts: embeddings and selections, activation statistics
(ReAct, DICE, ASH), attributions (Grad-CAM, Integrated Gradients), overlays, galleries and uploads."""
from __future__ import annotations

import io
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ood_core import activation_stats as A
from ood_core import embedding as E
from ood_core import explain as X
from ood_core import uploads
from ood_core import figures
from ood_core.figures import activations as activation_figures
from ood_core.figures import embedding as embedding_figures
from ood_core import metrics
from ood_core.detectors.activations import ReAct
from ood_core.detectors.base import FitContext
from ood_core.inference import Outputs


# --- fixtures --------------------------------------------------------------------------------------

def _outputs(n, labels=None, k=3, d=4, seed=0, img=(1, 4, 4)):
    rng = np.random.default_rng(seed)
    labels = np.full(n, -1) if labels is None else np.asarray(labels)
    return Outputs(rng.normal(size=(n, k)).astype(np.float32), rng.random((n, d)).astype(np.float32),
                   labels, rng.normal(size=(n, *img)).astype(np.float32))


@pytest.fixture()
def small_frame():
    outs = {"test": _outputs(5, [0, 1, 2, 0, 1], seed=1), "gaussian": _outputs(3, seed=2),
            "rotated": _outputs(3, seed=3)}
    frame, M = E.frame_from_outputs(outs, ["test", "gaussian", "rotated"], ["zero", "one", "two"])
    return frame, M, outs


def _payload(points):
    return {"selection": {"points": points, "point_indices": [p.get("point_index", 0) for p in points],
                          "box": [], "lasso": []}}


def _pt(curve, idx, s, i):
    return {"curve_number": curve, "point_number": idx, "point_index": idx, "x": 0.0, "y": 0.0,
            "customdata": [s, i, "OOD", "1", 0.5]}


# --- frame and selection ---------------------------------------------------------------------------

def test_frame_columns_and_labels(small_frame):
    frame, M, outs = small_frame
    assert list(frame["set"]) == ["test"] * 5 + ["gaussian"] * 3 + ["rotated"] * 3
    assert list(frame["index"]) == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2]
    assert list(frame["label"][:5]) == [0, 1, 2, 0, 1] and set(frame["label"][5:]) == {-1}
    assert list(frame["label_name"][:3]) == ["zero", "one", "two"] and set(frame["label_name"][5:]) == {"OOD"}
    assert list(frame["kind"].unique()) == ["ID", "OOD"]
    np.testing.assert_array_equal(frame["pred"][:5], outs["test"].logits.argmax(1))
    z = outs["test"].logits[0].astype(np.float64)
    assert frame["confidence"][0] == pytest.approx(np.exp(z).max() / np.exp(z).sum())
    np.testing.assert_allclose(M[5:8], outs["gaussian"].features)


def test_frame_pixels_and_subsampling():
    outs = {"test": _outputs(10, np.zeros(10, int)), "gaussian": _outputs(7)}
    frame, M = E.frame_from_outputs(outs, ["test", "gaussian"], ["a"], space="pixels", max_per_set=4, seed=3,
                                    to_pixels=lambda x: x * 0 + 0.25)
    assert M.shape == (8, 16) and np.all(M == 0.25)
    idx = frame["index"].to_numpy()
    assert len(set(idx[:4])) == 4 and np.all(np.diff(idx[:4]) > 0) and idx.max() < 10
    again, _ = E.frame_from_outputs(outs, ["test", "gaussian"], ["a"], space="pixels", max_per_set=4, seed=3)
    np.testing.assert_array_equal(again["index"], frame["index"])  # seeded
    with pytest.raises(ValueError, match="unknown set"):
        E.frame_from_outputs(outs, ["nope"], ["a"])
    with pytest.raises(ValueError, match="space"):
        E.frame_from_outputs(outs, ["test"], ["a"], space="latent")


def test_select_click(small_frame):
    frame, _, _ = small_frame
    sel = E.select_samples(frame, _payload([_pt(1, 2, "gaussian", 2)]))
    assert list(zip(sel["set"], sel["index"])) == [("gaussian", 2)]
    assert list(sel.index) == [7]  # the frame's row position, to index the coordinates


def test_select_box_across_traces_in_frame_order(small_frame):
    frame, _, _ = small_frame
    pts = [_pt(2, 0, "rotated", 0), _pt(0, 4, "test", 4), _pt(1, 0, "gaussian", 0), _pt(0, 1, "test", 1)]
    payload = _payload(pts)
    payload["selection"]["box"] = [{"xref": "x", "yref": "y", "x": [0, 1], "y": [0, 1]}]
    sel = E.select_samples(frame, payload)
    assert list(zip(sel["set"], sel["index"])) == [("test", 1), ("test", 4), ("gaussian", 0), ("rotated", 0)]


def test_select_lasso_duplicates_and_float_indices(small_frame):
    frame, _, _ = small_frame
    pts = [_pt(0, 3, "test", 3.0), _pt(0, 3, "test", 3), _pt(2, 1, "rotated", 1), _pt(2, 1, "rotated", 1.0)]
    payload = _payload(pts)
    payload["selection"]["lasso"] = [{"xref": "x", "yref": "y", "x": [0, 1, 1], "y": [0, 0, 1]}]
    sel = E.select_samples(frame, payload["selection"])  # the inner dict works too
    assert list(zip(sel["set"], sel["index"])) == [("test", 3), ("rotated", 1)]


def test_select_empty_and_unusable(small_frame):
    frame, _, _ = small_frame
    for empty in (None, {}, _payload([]), {"selection": None},
                  _payload([{"curve_number": 0, "point_index": 1}]),  # no customdata
                  _payload([_pt(0, 0, "unknown-set", 0), _pt(0, 0, "test", 99)])):
        sel = E.select_samples(frame, empty)
        assert len(sel) == 0 and list(sel.columns) == list(frame.columns)


def test_figure_customdata_round_trips_through_selection(small_frame):
    frame, M, _ = small_frame
    xy = E.embed(M, "pca")
    for color_by in ("set", "label", "pred"):
        fig = embedding_figures.embedding_figure(frame, xy, color_by)
        data = json.loads(fig.to_json())["data"]  # what the browser gets
        pts = []
        for ci, tr in enumerate(data):
            for pi, cd in enumerate(tr.get("customdata") or []):
                pts.append({"curve_number": ci, "point_index": pi, "customdata": cd})
        sel = E.select_samples(frame, _payload(pts))
        assert len(sel) == len(frame) and list(sel.index) == list(range(len(frame)))
    fig = embedding_figures.embedding_figure(frame, xy, "set")
    assert fig.layout.dragmode == "zoom" and len(fig.data) == 3  # a click selects (lasso in the mode bar)
    assert set(fig.data[0].marker.symbol) == {"circle"}
    assert set(fig.data[1].marker.symbol) != {"circle"} and set(fig.data[1].marker.symbol) != set(fig.data[2].marker.symbol)
    lab = embedding_figures.embedding_figure(frame, xy, "label")
    assert any(t.name.startswith("OOD") for t in lab.data)
    scores = {"test": np.arange(5.0), "gaussian": np.arange(3.0) + 10, "rotated": np.arange(3.0) + 20}
    sc = embedding_figures.embedding_figure(frame, xy, "score", scores=scores)
    np.testing.assert_allclose(sc.data[0].marker.color, [0, 1, 2, 3, 4, 10, 11, 12, 20, 21, 22])
    bar = sc.data[0].marker.colorbar  # in the lower part of the margin, clear of the legend at the top right
    assert bar.y == 0 and bar.yanchor == "bottom" and bar.len <= 0.6 and bar.title.side == "right"
    with pytest.raises(ValueError):
        embedding_figures.embedding_figure(frame, xy, "score")
    with pytest.raises(ValueError):
        embedding_figures.embedding_figure(frame, xy[:3], "set")


# --- embeddings ------------------------------------------------------------------------------------

def test_pca_of_a_line_is_collinear():
    rng = np.random.default_rng(0)
    t = rng.normal(size=50)
    X_ = np.outer(t, rng.normal(size=10)) + rng.normal(size=10)
    xy = E.embed(X_, "pca", seed=0)
    assert xy.shape == (50, 2)
    s = np.linalg.svd(xy - xy.mean(0), compute_uv=False)
    assert s[1] < 1e-8 * s[0]
    assert abs(np.corrcoef(xy[:, 0], t)[0, 1]) > 0.999999


def test_embed_rejects_bad_input():
    ok = np.random.default_rng(0).normal(size=(20, 3))
    bad = ok.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        E.embed(bad, "pca")
    with pytest.raises(ValueError, match="unknown embedding method"):
        E.embed(ok, "mds")
    with pytest.raises(ValueError, match="at least"):
        E.embed(ok[:3], "tsne")
    with pytest.raises(ValueError, match="2-D"):
        E.embed(ok[0], "pca")


def test_reducers_pca_transform_and_tsne_refuses():
    rng = np.random.default_rng(1)
    X_ = rng.normal(size=(30, 5))
    red = E.fit_reducer(X_, "pca", seed=0)
    assert red.can_transform
    np.testing.assert_allclose(red.embedding_, E.embed(X_, "pca"), atol=1e-10)
    # fitted rows come back from the cache (in any order), new rows go through the model
    np.testing.assert_array_equal(red.transform(X_[[4, 2]]), red.embedding_[[4, 2]])
    new = X_[:3] + 0.5
    mixed = red.transform(np.vstack([new, X_[7:8]]))
    np.testing.assert_allclose(mixed[:3], red.model.transform(new), atol=1e-10)
    np.testing.assert_array_equal(mixed[3], red.embedding_[7])
    with pytest.raises(ValueError, match="fitted on 5-d"):
        red.transform(X_[:, :3])
    ts = E.fit_reducer(X_, "tsne", seed=0, max_iter=250)
    assert not ts.can_transform and ts.embedding_.shape == (30, 2)
    np.testing.assert_array_equal(ts.transform(X_[::-1]), ts.embedding_[::-1])  # a repeated view: fine
    with pytest.raises(ValueError, match="t-SNE has no out-of-sample"):
        ts.transform(new)
    np.testing.assert_allclose(E.embed(X_, "tsne", seed=0, max_iter=250), ts.embedding_)  # seeded


# --- activation statistics -------------------------------------------------------------------------

F34 = np.array([[0.0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 20]])


def test_unit_stats_and_profile_by_hand():
    mean, std = A.unit_stats(F34)
    np.testing.assert_allclose(mean, [4, 5, 6, 10])
    np.testing.assert_allclose(std, [math.sqrt(32 / 3)] * 3 + [math.sqrt(158 / 3)])
    prof = A.sorted_unit_profile(F34, {"far": F34 * 2})
    np.testing.assert_array_equal(prof.units, [3, 2, 1, 0])
    np.testing.assert_allclose(prof.mean["ID"], [10, 6, 5, 4])
    np.testing.assert_allclose(prof.mean["far"], [20, 12, 10, 8])
    np.testing.assert_allclose(prof.std["far"], 2 * std[[3, 2, 1, 0]])
    assert len(prof.to_frame()) == 8


def test_clip_threshold_by_hand_and_equal_to_react():
    assert A.clip_threshold(F34, 50) == pytest.approx(5.5)  # median of 0..10, 20
    assert A.clip_threshold(F34, 90) == pytest.approx(9.9)  # 9 + 0.9 * (10 - 9)
    rng = np.random.default_rng(0)
    h = np.maximum(rng.normal(size=(200, 16)), 0)
    model = SimpleNamespace(head_weight=np.ones((3, 16)), head_bias=np.zeros(3))
    det = ReAct(percentile=85).fit(FitContext(train=Outputs(np.zeros((200, 3)), h, np.zeros(200, int)), model=model))
    assert A.clip_threshold(h, 85) == det.threshold_


def test_energy_before_after_by_hand():
    W, b = np.eye(2), np.zeros(2)
    assert A.energy([[1.0, 3.0]], W, b)[0] == pytest.approx(-math.log(math.e + math.e ** 3))
    assert A.energy([[1.0, 3.0]], W, b, threshold=2.0)[0] == pytest.approx(-math.log(math.e + math.e ** 2))
    id_h = np.array([[2.0, 0.0], [0.0, 2.0]])
    ood_h = np.array([[5.0, 0.0], [0.0, 0.1]])
    sh = A.energy_before_after(id_h, {"spiky": ood_h}, W, b, threshold=1.0)
    np.testing.assert_allclose(sh.id_before, -np.log(np.exp(2) + 1))
    np.testing.assert_allclose(sh.id_after, -np.log(np.e + 1))
    np.testing.assert_allclose(sh.ood_before["spiky"], [-np.log(np.exp(5) + 1), -np.log(1 + np.exp(0.1))])
    # before: the spike looks more ID than ID (0 of 2 pairs) and the flat one is caught (2 of 2) -> 0.5
    assert sh.auroc_before["spiky"] == pytest.approx(0.5)
    # after clipping at 1 the spike ties with ID (2 halves) -> 3/4
    assert sh.auroc_after["spiky"] == pytest.approx(0.75)
    single = A.energy_before_after(Outputs(np.zeros((2, 2)), id_h, np.zeros(2, int)), ood_h, W, b, 1.0)
    assert single.auroc_after == {"OOD": pytest.approx(0.75)}


def test_dice_by_hand():
    V = A.dice_contribution(np.array([[1.0, 2.0], [1.0, 2.0]]), np.array([[1.0, -1.0], [2.0, 0.5]]))
    np.testing.assert_allclose(V, [[1, -2], [2, 1]])
    mask = A.dice_mask(V, 50)  # 50th percentile of (-2, 1, 1, 2) is 1: keep V > 1
    np.testing.assert_array_equal(mask, [[False, False], [True, False]])
    e = A.dice_energy([[1.0, 1.0]], np.array([[1.0, -1.0], [2.0, 0.5]]), np.zeros(2), mask)
    assert e[0] == pytest.approx(-math.log(1 + math.e ** 2))


def test_ash_by_hand():
    h = np.array([[0.0, 1.0, 2.0, 3.0]])
    np.testing.assert_allclose(A.ash_shape(h, 50, "p"), [[0, 0, 2, 3]])
    np.testing.assert_allclose(A.ash_shape(h, 50, "b"), [[0, 0, 3, 3]])
    np.testing.assert_allclose(A.ash_shape(h, 50, "s"), [[0, 0, 2 * math.exp(1.2), 3 * math.exp(1.2)]])
    pr = A.ash_pruned_fraction(h, 50)
    assert pr.active_pruned[0] == pytest.approx(0.25) and pr.already_zero[0] == pytest.approx(0.25)
    assert pr.mass_removed[0] == pytest.approx(1 / 6) and pr.scale[0] == pytest.approx(math.exp(1.2))
    np.testing.assert_allclose(A.ash_shape(h, 0, "p"), h)


def test_activation_view_matches_pieces_and_figures_build():
    rng = np.random.default_rng(0)
    tr, te = np.maximum(rng.normal(size=(300, 12)), 0), np.maximum(rng.normal(size=(100, 12)), 0)
    ood = {"spiky": np.maximum(rng.normal(size=(50, 12)), 0) * 3}
    W, b = rng.normal(size=(4, 12)), rng.normal(size=4)
    view = A.activation_view(tr, te, ood, W, b)
    sh = A.react_at(view, 90)
    ref = A.energy_before_after(te, ood, W, b, A.clip_threshold(tr, 90))
    np.testing.assert_allclose(sh.ood_after["spiky"], ref.ood_after["spiky"])
    assert sh.auroc_after == ref.auroc_after and sh.threshold == ref.threshold
    mask, dsh = A.dice_at(view, 70)
    assert mask.shape == (4, 12)
    assert dsh.auroc_after["spiky"] == pytest.approx(metrics.auroc(dsh.id_after, dsh.ood_after["spiky"]))
    pr, ash = A.ash_at(view, 65)
    assert set(pr) == {"ID", "spiky"}
    assert sum(c.sum() for c in view.hist.counts.values()) > 0
    assert len(activation_figures.unit_profile_figure(view.profile, threshold=sh.threshold).data) == 4
    f = activation_figures.activation_histogram_figure(view.hist, sh.threshold, 90)
    assert "90" in f.layout.annotations[0].text
    log = activation_figures.activation_histogram_figure(view.hist, sh.threshold, 90, log_y=True).layout.yaxis
    assert (log.type, log.dtick, log.exponentformat, log.minexponent) == ("log", 1, "power", 0)  # 10^k per decade
    f = activation_figures.energy_shift_figure(sh)
    assert any("AUROC" in (t.name or "") for t in f.data)
    assert len(activation_figures.dice_contribution_figure(view.V, mask).data) == 2


# --- attributions ----------------------------------------------------------------------------------

class CornerNet(nn.Module):
    """1-channel input -> maxpool(2) -> 1x1 conv to 2 channels (+x, -x) -> ReLU (the Grad-CAM layer) -> GAP -> head.

    Class 1 reads channel 0 (bright evidence) only, class 0 reads channel 1 (dark evidence) only,
    so Grad-CAM for class 1 is the bright part of the (pooled) input and for class 0 on a non-negative
    image it is zero everywhere.
    """

    def __init__(self):
        super().__init__()
        self.pool2 = nn.MaxPool2d(2)
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight[:] = torch.tensor([1.0, -1.0]).view(2, 1, 1, 1)
            self.head.weight[:] = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
            self.head.bias[:] = torch.tensor([0.0, -0.01])

    @property
    def last_conv(self):
        return self.relu

    def forward(self, x):
        return self.head(self.gap(self.relu(self.conv(self.pool2(x)))).flatten(1))


def _blob(where: str, n: int = 16) -> np.ndarray:
    x = np.zeros((1, 1, n, n), np.float32)
    if where == "tl":
        x[0, 0, 1:5, 1:5] = 1.0
    else:
        x[0, 0, -5:-1, -5:-1] = 1.0
    return x


def test_gradcam_finds_the_corner():
    torch.manual_seed(0)
    model = CornerNet()
    x = np.concatenate([_blob("tl"), _blob("br")])
    x0 = x.copy()
    heat = X.gradcam(model, x)  # predicted class: 1 for both
    assert heat.shape == (2, 16, 16) and heat.min() >= 0 and heat.max() == pytest.approx(1.0)
    tl = heat[0, :8, :8].sum() / heat[0].sum()
    br = heat[1, 8:, 8:].sum() / heat[1].sum()
    assert tl > 0.8 and br > 0.8
    assert heat[1, :8, :8].sum() / heat[1].sum() < 0.05  # the heat moved with the blob
    # class 0 (dark evidence) has none in a non-negative image: an all-zero map, kept at zero
    zero = X.gradcam(model, x, target=0)
    assert np.all(zero == 0) and list(X.zero_maps(zero)) == [0, 1]
    per = X.gradcam(model, x, target=np.array([1, 0]))
    np.testing.assert_allclose(per[0], heat[0])
    np.testing.assert_allclose(per[1], 0)
    # no side effects: input untouched, eval mode, no gradients left, in-place ReLU restored
    np.testing.assert_array_equal(x, x0)
    assert not model.training and all(p.grad is None for p in model.parameters()) and model.relu.inplace
    with pytest.raises(ValueError, match="target class"):
        X.gradcam(model, x, target=5)


def test_guided_gradcam_follows_the_blob():
    model = CornerNet()
    g = X.guided_gradcam(model, _blob("tl"), target=1)
    assert g.shape == (1, 16, 16) and g[0, :8, :8].sum() / g[0].sum() > 0.8
    assert all(p.grad is None for p in model.parameters()) and model.relu.inplace


def test_attribute_dispatches_to_each_method_and_refuses_others():
    model, x = CornerNet(), _blob("tl")
    np.testing.assert_array_equal(X.attribute(model, "gradcam", x, 1), X.gradcam(model, x, 1))
    np.testing.assert_array_equal(X.attribute(model, "guided_gradcam", x, 1), X.guided_gradcam(model, x, 1))
    bench = SimpleNamespace(mean=0.25, std=0.5)  # black (0) normalised: a baseline of -0.5
    np.testing.assert_allclose(X.attribute(model, "integrated_gradients", x, 1, bench=bench),
                               X.integrated_gradients(model, x, 1, baseline=-0.5), atol=1e-6)
    assert set(X.ATTRIBUTION_METHODS) == {"gradcam", "guided_gradcam", "integrated_gradients"}
    with pytest.raises(ValueError, match="unknown attribution method 'lime'"):
        X.attribute(model, "lime", x)


def test_integrated_gradients_completeness():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    x = torch.randn(3, 1, 4, 4).numpy()
    base = -0.5
    raw = X.integrated_gradients(model, x, baseline=base, steps=64, raw=True)
    with torch.no_grad():
        f = model(torch.from_numpy(x))
        fb = model(torch.full_like(torch.from_numpy(x), base))
    t = f.argmax(1)
    expected = (f.gather(1, t[:, None]) - fb.gather(1, t[:, None])).ravel().numpy()
    np.testing.assert_allclose(raw.reshape(3, -1).sum(1), expected, rtol=0.05, atol=1e-3)
    heat = X.integrated_gradients(model, x, baseline=base)
    assert heat.shape == (3, 4, 4) and heat.max() == pytest.approx(1.0) and heat.min() >= 0
    bench = SimpleNamespace(mean=0.25, std=0.5)  # the black image normalises to -0.5
    np.testing.assert_allclose(X.integrated_gradients(model, x, bench=bench, steps=64, raw=True), raw, rtol=1e-5)
    with pytest.raises(ValueError, match="baseline"):
        X.integrated_gradients(model, x)


def test_overlay_shape_dtype_and_colours():
    img = np.full((5, 6), 0.5)
    heat = np.zeros((5, 6))
    heat[0, 0] = 1.0
    out = X.overlay(img, heat, alpha=0.5)
    assert out.shape == (5, 6, 3) and out.dtype == np.uint8
    full = X.overlay(img, heat, alpha=1.0)
    np.testing.assert_array_equal(full[0, 0], [252, 255, 164])  # inferno's top
    np.testing.assert_array_equal(full[1, 1], [0, 0, 4])  # inferno's bottom
    np.testing.assert_array_equal(X.overlay(img[None], heat, alpha=0.0)[2, 2], [128, 128, 128])
    assert X.overlay(np.zeros((3, 5, 6)), heat, cmap="jet").shape == (5, 6, 3)
    with pytest.raises(ValueError):
        X.overlay(img, np.zeros((4, 4)))


def test_upscale_repeats_pixels_without_blur():
    grey = np.array([[[0.0, 1.0], [0.5, 0.25]]])  # (c=1, h=2, w=2)
    (big,) = figures.upscale(grey[None], 3)
    assert big.shape == (6, 6) and big.dtype == np.uint8
    np.testing.assert_array_equal(big[:3, :3], 0)
    np.testing.assert_array_equal(big[:3, 3:], 255)
    np.testing.assert_array_equal(big[3:, :3], 127)
    np.testing.assert_array_equal(big[3:, 3:], 63)
    rgb = np.zeros((2, 3, 1, 2))
    rgb[:, 0] = 2.0  # out of range: clipped to 1
    out = figures.upscale(rgb, 2)
    assert len(out) == 2 and out[0].shape == (2, 4, 3)
    np.testing.assert_array_equal(out[1][..., 0], 255)
    np.testing.assert_array_equal(out[1][..., 1:], 0)


# --- galleries and placement -----------------------------------------------------------------------

def test_gallery_helpers_order():
    idx, v = X.most_id_like_ood([0.5, 0.1, 0.3, 0.1], 3)
    assert list(idx) == [1, 3, 2] and list(v) == [0.1, 0.1, 0.3]
    idx, v = X.most_ood_like_id([0.2, 0.9, 0.9, 0.1], 2)
    assert list(idx) == [1, 2] and list(v) == [0.9, 0.9]
    logits = np.array([[5.0, 0, 0], [0, 3, 0], [0, 0, 1], [2, 0, 0], [9, 0, 0]])
    labels = np.array([1, 1, 0, 0, -1])  # 0 wrong (very sure), 1 right, 2 wrong (less sure), 3 right, 4 OOD
    idx, conf = X.confident_mistakes(logits, labels, 5)
    assert list(idx) == [0, 2] and conf[0] > conf[1]
    assert conf[0] == pytest.approx(np.exp(5) / (np.exp(5) + 2))
    assert len(X.most_id_like_ood([1.0, 2.0], 10)[0]) == 2
    with pytest.raises(ValueError):
        X.most_ood_like_id([1.0], -1)


def test_place_sample():
    id_s = {"msp": np.arange(100.0)}
    ood_s = {"msp": {"a": np.arange(100.0, 150.0), "b": np.arange(150.0, 200.0)}}
    out = X.place_sample({"msp": 49.5}, id_s, ood_s)["msp"]
    assert out["id_percentile"] == pytest.approx(50.0) and out["ood_percentile"] == 0.0
    assert not out["flagged"]
    out = X.place_sample({"msp": 150.0}, id_s, ood_s)["msp"]
    assert out["id_percentile"] == 100.0 and out["ood_percentile"] == pytest.approx(50.5) and out["flagged"]
    with pytest.raises(ValueError):
        X.place_sample({"energy": 1.0}, id_s, ood_s)


# --- uploads ---------------------------------------------------------------------------------------

BENCH1 = SimpleNamespace(input_shape=(1, 16, 16), mean=0.2, std=0.3,
                         normalise=lambda p: ((p - 0.2) / 0.3).astype(np.float32))


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, format="PNG") if mode else Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_upload_dark_background_png():
    a = np.zeros((32, 32), np.uint8)
    a[8:24, 8:24] = 255
    up = uploads.preprocess_upload(_png(a), BENCH1)
    assert up.x.shape == (1, 1, 16, 16) and up.x.dtype == np.float32 and not up.inverted
    assert up.pixels.min() >= 0 and up.pixels.max() <= 1 and up.original_size == (32, 32)
    assert up.pixels[0, 8, 8] == pytest.approx(1.0) and up.pixels[0, 0, 0] == pytest.approx(0.0)
    np.testing.assert_allclose(up.x[0], (up.pixels - 0.2) / 0.3, rtol=1e-6)


def test_upload_auto_inverts_white_background_and_respects_flag():
    a = np.full((40, 40, 3), 255, np.uint8)
    a[10:30, 16:24] = 0  # a dark stroke on white
    up = uploads.preprocess_upload(_png(a), BENCH1)
    assert up.inverted and up.pixels[0, 0, 0] == pytest.approx(0.0) and up.pixels[0, 8, 8] > 0.9
    assert not uploads.preprocess_upload(_png(a), BENCH1, invert=False).inverted
    rgba = np.zeros((20, 20, 4), np.uint8)
    rgba[5:15, 9:11] = [0, 0, 0, 255]  # black stroke on a transparent background (shown on white)
    up = uploads.preprocess_upload(_png(rgba), BENCH1)
    assert up.inverted and up.pixels[0, 0, 0] == pytest.approx(0.0)
    bench3 = SimpleNamespace(input_shape=(3, 8, 8), normalise=lambda p: p.astype(np.float32))
    assert uploads.preprocess_upload(_png(a), bench3).x.shape == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="invert"):
        uploads.preprocess_upload(_png(a), BENCH1, invert="yes")


def test_upload_rejects_bad_files():
    with pytest.raises(ValueError, match="could not read the upload as an image"):
        uploads.preprocess_upload(b"this is not an image at all", BENCH1)
    with pytest.raises(ValueError, match="empty"):
        uploads.preprocess_upload(b"", BENCH1)
    good = _png(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    with pytest.raises(ValueError):
        uploads.preprocess_upload(good[: len(good) // 2], BENCH1)
    with pytest.raises(ValueError, match="at least 4x4"):
        uploads.preprocess_upload(_png(np.zeros((3, 3), np.uint8)), BENCH1)
    with pytest.raises(ValueError, match="at most 4096x4096"):
        uploads.preprocess_upload(_png(np.zeros((4, 4097), np.uint8)), BENCH1)


def test_frame_inputs_follow_the_rows(small_frame):
    frame, _, outs = small_frame
    exp = SimpleNamespace(outputs=outs, bench=SimpleNamespace(splits=lambda: {}, input_shape=(1, 4, 4)))
    rows = E.select_samples(frame, _payload([_pt(0, 0, "rotated", 2), _pt(0, 0, "test", 1)]))
    x = E.frame_inputs(exp, rows)
    np.testing.assert_array_equal(x[0], outs["test"].inputs[1])
    np.testing.assert_array_equal(x[1], outs["rotated"].inputs[2])
    assert E.frame_inputs(exp, rows.iloc[0:0]).shape == (0, 1, 4, 4)


def test_upload_sixteen_bit_grey_and_file_like():
    a = np.zeros((20, 20), np.uint16)
    a[5:15, 5:15] = 65535
    im = Image.fromarray(a)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    up = uploads.preprocess_upload(io.BytesIO(buf.getvalue()), BENCH1)  # objects with getvalue()/read() work too
    assert up.original_mode.startswith("I") and not up.inverted
    assert up.pixels[0, 8, 8] == pytest.approx(1.0) and up.pixels[0, 0, 0] == pytest.approx(0.0)
    with pytest.raises(uploads.UploadError):
        uploads.preprocess_upload(12345, BENCH1)


def test_the_activation_views_use_the_detectors_own_formulas_and_defaults():
    from ood_core.detectors import REGISTRY
    from ood_core.detectors.activations import react_score, react_threshold

    h = np.array([[0.0, 1.0, 4.0], [2.0, 3.0, 0.5]])
    W, b = np.array([[1.0, 0.0, 1.0], [0.0, 2.0, -1.0]]), np.array([0.5, 0.0])
    # c = 50th percentile of the six values {0, 0.5, 1, 2, 3, 4} = 1.5 (linear interpolation)
    assert react_threshold(h, 50) == 1.5
    clipped = np.minimum(h, 1.5)
    want = -np.log(np.exp(clipped @ W.T + b).sum(axis=1))  # by hand: energy of the clipped features
    np.testing.assert_allclose(react_score(h, W, b, 1.5), want, rtol=1e-12)
    np.testing.assert_allclose(A.energy(h, W, b, 1.5), want, rtol=1e-12)
    assert A.clip_threshold(h, 50) == 1.5
    with pytest.raises(ValueError, match="percentile"):
        A.clip_threshold(h, 10)  # outside ReAct's own range [50, 99.9]
    assert A.DICE_DEFAULT_SPARSITY == REGISTRY["dice"].params["sparsity"].default
    assert A.ASH_DEFAULT_PERCENTILE == REGISTRY["ash_s"].params["percentile"].default == 90.0


def test_log_axes_label_each_decade_as_a_power_of_ten():
    rows = [{"value": v, "ood_set": "g", "auroc": 0.5 + v / 4000, "fpr95": 0.5} for v in (0.1, 1.0, 10.0, 1000.0)]
    x = figures.sensitivity_figure(rows, "temperature", log_x=True).layout.xaxis
    assert (x.type, x.dtick, x.exponentformat, x.minexponent) == ("log", 1, "power", 0)
    narrow = figures.sensitivity_figure(rows[:1] + [{**rows[0], "value": 0.5}], "t", log_x=True).layout.xaxis
    assert narrow.type == "log" and narrow.dtick is None  # within a decade: plotly's own full numbers
    assert figures.log_ticks(1, 9.9) == {"type": "log"} and figures.log_ticks(1, 10)["dtick"] == 1
