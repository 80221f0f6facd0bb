"""Why activation shaping works: per-unit statistics of the penultimate activations, ReAct's clipping,
DICE's weight sparsification and ASH's pruning, as pure functions and plotly figure builders.

(Named activation_stats to keep it apart from detectors/activations.py, the detectors themselves.)
Energy score everywhere: E(h) = -logsumexp(W h + b), higher = more OOD.

For a page that redraws on a slider move, `activation_view` precomputes once what does not depend on
the percentile (unit profile, energies without shaping and their AUROCs, histogram counts, DICE's
contribution matrix); `react_at`, `dice_at` and `ash_at` then cost a few milliseconds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from . import metrics
from .detectors.activations import (ASHS, DICE, ReAct, ash_binarise, ash_prune, ash_scale, energy_of, react_score,
                                    react_threshold, top_k_mask)
from .detectors.activations import dice_contribution as _dice_contribution
from .detectors.activations import dice_mask as _dice_mask

ID_NAME = "ID"
# defaults and slider ranges are the detectors' own, so the view and the detector never disagree
REACT_PERCENTILE = ReAct.params["percentile"]
DICE_DEFAULT_SPARSITY = DICE.params["sparsity"].default
ASH_DEFAULT_PERCENTILE = ASHS.params["percentile"].default
ASH_MODES = ("p", "b", "s")


def _feats(x) -> np.ndarray:
    """Features from an Outputs or an array, as float64 (n, D)."""
    f = x.features if hasattr(x, "features") else x
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"activations must be a 2-D array (samples x units), got shape {f.shape}")
    return f


def _feats_by_set(ood) -> dict[str, np.ndarray]:
    if isinstance(ood, Mapping):
        return {str(k): _feats(v) for k, v in ood.items()}
    return {"OOD": _feats(ood)}


# --- per-unit statistics ---------------------------------------------------------------------------

def unit_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit mean and standard deviation (population, ddof=0) over samples: two arrays of shape (D,)."""
    f = _feats(features)
    if len(f) == 0:
        raise ValueError("unit statistics need at least one sample")
    return f.mean(axis=0), f.std(axis=0)


@dataclass
class UnitProfile:
    """Units sorted by their mean ID activation (descending), with each set's mean and std in that order.

    The view of ReAct's Fig. 1: OOD inputs push some units far above their ID level.
    """

    units: np.ndarray  # unit ids in plotting order
    mean: dict[str, np.ndarray]  # set -> (D,) in `units` order; ID first
    std: dict[str, np.ndarray]

    def to_frame(self):
        import pandas as pd

        rows = []
        for s in self.mean:
            rows.append(pd.DataFrame({"set": s, "rank": np.arange(len(self.units)), "unit": self.units,
                                      "mean": self.mean[s], "std": self.std[s]}))
        return pd.concat(rows, ignore_index=True)


def sorted_unit_profile(id_feats, ood_feats_by_set, id_name: str = ID_NAME) -> UnitProfile:
    """Sort units by ID mean activation (descending, ties by unit id) and give every set's per-unit mean ± std."""
    m_id, s_id = unit_stats(id_feats)
    order = np.lexsort((np.arange(len(m_id)), -m_id))
    mean, std = {id_name: m_id[order]}, {id_name: s_id[order]}
    for name, f in _feats_by_set(ood_feats_by_set).items():
        if f.shape[1] != len(m_id):
            raise ValueError(f"set {name!r} has {f.shape[1]} units, ID has {len(m_id)}")
        m, s = unit_stats(f)
        mean[name], std[name] = m[order], s[order]
    return UnitProfile(order, mean, std)


# --- ReAct -----------------------------------------------------------------------------------------

def clip_threshold(id_train_features, percentile: float = REACT_PERCENTILE.default) -> float:
    """ReAct's clip c: the p-th percentile of all ID train activations (global over units and samples).

    The ReAct detector's own function, so the two always agree; p must lie in the detector's range.
    """
    f = _feats(id_train_features)
    if f.size == 0:
        raise ValueError("the clip threshold needs ID train activations")
    return react_threshold(f, REACT_PERCENTILE.validate("percentile", percentile))


def energy(features, W, b, threshold: Optional[float] = None) -> np.ndarray:
    """E = -logsumexp(W min(h, c) + b) per sample (no clipping when threshold is None); higher = more OOD."""
    h, W, b = _feats(features), np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return energy_of(h, W, b) if threshold is None else react_score(h, W, b, threshold)


@dataclass
class EnergyShift:
    """Energy scores without ("before") and with ("after") a shaping step, for ID and each OOD set."""

    id_before: np.ndarray
    id_after: np.ndarray
    ood_before: dict[str, np.ndarray]
    ood_after: dict[str, np.ndarray]
    auroc_before: dict[str, float]
    auroc_after: dict[str, float]
    threshold: Optional[float] = None
    label: str = "ReAct clipping"

    @property
    def mean_auroc_before(self) -> float:
        return float(np.mean(list(self.auroc_before.values())))

    @property
    def mean_auroc_after(self) -> float:
        return float(np.mean(list(self.auroc_after.values())))


def _aurocs(id_scores: np.ndarray, ood: Mapping[str, np.ndarray]) -> dict[str, float]:
    return {k: metrics.auroc(id_scores, v) for k, v in ood.items()}


def energy_before_after(outputs_id, outputs_ood, W, b, threshold: float) -> EnergyShift:
    """Energy with and without ReAct clipping at `threshold`, ID vs OOD, and the AUROC of each (OOD positive).

    outputs_id: Outputs or features (n, D); outputs_ood: one of those or {set: one of those}.
    """
    h_id = _feats(outputs_id)
    ood = _feats_by_set(outputs_ood)
    id_b, id_a = energy(h_id, W, b), energy(h_id, W, b, threshold)
    ob = {k: energy(v, W, b) for k, v in ood.items()}
    oa = {k: energy(v, W, b, threshold) for k, v in ood.items()}
    return EnergyShift(id_b, id_a, ob, oa, _aurocs(id_b, ob), _aurocs(id_a, oa), float(threshold))


# --- DICE ------------------------------------------------------------------------------------------

def dice_contribution(id_train_features, W) -> np.ndarray:
    """DICE's contribution matrix V = W ⊙ mean ID train h (broadcast over classes): shape (K, D)."""
    mean_h = _feats(id_train_features).mean(axis=0)
    W = np.asarray(W, dtype=np.float64)
    if W.shape[1] != len(mean_h):
        raise ValueError(f"W has {W.shape[1]} inputs, the activations have {len(mean_h)} units")
    return _dice_contribution(mean_h, W)


def dice_mask(V, sparsity: float = DICE_DEFAULT_SPARSITY) -> np.ndarray:
    """The weights DICE keeps: V > the `sparsity`-th percentile of V (about (100 - p)% of entries)."""
    if not 0.0 <= float(sparsity) < 100.0:
        raise ValueError(f"sparsity must be in [0, 100), got {sparsity}")
    return _dice_mask(np.asarray(V, dtype=np.float64), float(sparsity))


def dice_energy(features, W, b, mask) -> np.ndarray:
    """E = -logsumexp((M ⊙ W) h + b): the energy with DICE's sparsified head."""
    Wm = np.asarray(W, dtype=np.float64) * np.asarray(mask, dtype=bool)
    return energy(features, Wm, b)


# --- ASH -------------------------------------------------------------------------------------------

def _ash_keep(h: np.ndarray, percentile: float) -> np.ndarray:
    """Boolean mask of the top-k activations per sample, k = D - round(D p / 100): the ASH detectors' own mask."""
    if not 0.0 <= float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    if h.shape[0] == 0:
        return np.zeros(h.shape, dtype=bool)
    return top_k_mask(h, float(percentile))


def ash_shape(features, percentile: float = ASH_DEFAULT_PERCENTILE, mode: str = "s") -> np.ndarray:
    """ASH on penultimate activations: keep each sample's top (100-p)% units, zero the rest, then
    "p": leave as is; "b": set kept units to s1/k (binarise, keeping the sum); "s": scale by exp(s1/s2)
    (s1, s2 = sum before and after pruning)."""
    if mode not in ASH_MODES:
        raise ValueError(f"ASH mode must be one of {ASH_MODES}, got {mode!r}")
    if not 0.0 <= float(percentile) <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    shape = {"p": ash_prune, "b": ash_binarise, "s": ash_scale}[mode]  # the ASH detectors' own shaping
    return shape(_feats(features), float(percentile))


@dataclass
class AshPruning:
    """Per sample at one percentile: the share of units zeroed that were active, the share already zero
    before pruning, the share of the activation mass removed, and ASH-S's scale exp(s1/s2)."""

    active_pruned: np.ndarray
    already_zero: np.ndarray
    mass_removed: np.ndarray
    scale: np.ndarray


def ash_pruned_fraction(features, percentile: float = ASH_DEFAULT_PERCENTILE) -> AshPruning:
    """How much ASH removes per sample at `percentile` (fractions of the D units / of the sum)."""
    h = _feats(features)
    keep = _ash_keep(h, percentile)
    d = max(1, h.shape[1])
    active = h > 0
    s1 = h.sum(axis=1)
    s2 = np.where(keep, h, 0.0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mass = np.where(s1 > 0, 1.0 - s2 / np.where(s1 > 0, s1, 1.0), 0.0)
        scale = np.where(s2 > 0, np.exp(s1 / np.where(s2 > 0, s2, 1.0)), 1.0)
    return AshPruning((active & ~keep).sum(axis=1) / d, (~active).sum(axis=1) / d, mass, scale)


# --- the precomputed view for a page ---------------------------------------------------------------

@dataclass
class HistogramData:
    """Counts of activation values on shared edges, per set (ID first); zeros counted apart."""

    edges: np.ndarray
    counts: dict[str, np.ndarray]
    zero_fraction: dict[str, float]
    n_values: dict[str, int]


def activation_histograms(id_feats, ood_feats_by_set, bins: int = 60, max_values: int = 200_000,
                          seed: int = 0, id_name: str = ID_NAME, skip_zeros: bool = True) -> HistogramData:
    """Histogram counts of all activation values of each set on common edges (ID first).

    Exact zeros (the ReLU floor) are left out of the bars when `skip_zeros` and reported as a fraction;
    sets with more than `max_values` values are subsampled (seeded).
    """
    rng = np.random.default_rng(seed)
    vals = {id_name: _feats(id_feats).ravel(), **{k: v.ravel() for k, v in _feats_by_set(ood_feats_by_set).items()}}
    for k, v in vals.items():
        if len(v) > max_values:
            vals[k] = v[rng.choice(len(v), max_values, replace=False)]
    zero = {k: float(np.mean(v == 0)) if len(v) else 0.0 for k, v in vals.items()}
    shown = {k: v[v != 0] if skip_zeros else v for k, v in vals.items()}
    allv = np.concatenate([v for v in shown.values() if len(v)] or [np.zeros(1)])
    lo, hi = float(allv.min()), float(allv.max())
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, int(bins) + 1)
    counts = {k: np.histogram(v, bins=edges)[0] for k, v in shown.items()}
    return HistogramData(edges, counts, zero, {k: len(v) for k, v in vals.items()})


@dataclass
class ActivationView:
    """What the Activations page needs that does not depend on the percentile; see `activation_view`."""

    train_flat: np.ndarray  # all ID train activations, flattened (for the threshold)
    id_feats: np.ndarray
    ood_feats: dict[str, np.ndarray]
    W: np.ndarray
    b: np.ndarray
    profile: UnitProfile
    hist: HistogramData
    id_energy: np.ndarray
    ood_energy: dict[str, np.ndarray]
    auroc_energy: dict[str, float]
    V: np.ndarray  # DICE contribution matrix
    mean_train: np.ndarray = field(repr=False, default=None)


def activation_view(train_feats, id_feats, ood_feats_by_set, W, b, bins: int = 60,
                    max_hist_values: int = 200_000, seed: int = 0) -> ActivationView:
    """Precompute the percentile-independent parts (ID = ID test features, train = ID train features)."""
    tr = _feats(train_feats)
    h_id = _feats(id_feats)
    ood = _feats_by_set(ood_feats_by_set)
    W = np.asarray(W, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    e_id = energy(h_id, W, b)
    e_ood = {k: energy(v, W, b) for k, v in ood.items()}
    return ActivationView(
        train_flat=tr.ravel(), id_feats=h_id, ood_feats=ood, W=W, b=b,
        profile=sorted_unit_profile(h_id, ood), hist=activation_histograms(h_id, ood, bins, max_hist_values, seed),
        id_energy=e_id, ood_energy=e_ood, auroc_energy=_aurocs(e_id, e_ood),
        V=dice_contribution(tr, W), mean_train=tr.mean(axis=0))


def activation_view_from_experiment(exp, sets=None, **kw) -> ActivationView:
    """`activation_view` on an Experiment's cached Outputs: ID train, ID test and the chosen OOD sets."""
    names = list(exp.ood_names if sets is None else sets)
    return activation_view(exp.outputs["train"].features, exp.outputs["test"].features,
                           {s: exp.outputs[s].features for s in names}, exp.adapter.head_weight,
                           exp.adapter.head_bias, **kw)


def react_at(view: ActivationView, percentile: float) -> EnergyShift:
    """ReAct at percentile p on a precomputed view: threshold, clipped energies and AUROCs."""
    c = clip_threshold(view.train_flat[:, None], percentile)
    id_a = energy(view.id_feats, view.W, view.b, c)
    oa = {k: energy(v, view.W, view.b, c) for k, v in view.ood_feats.items()}
    return EnergyShift(view.id_energy, id_a, view.ood_energy, oa, view.auroc_energy, _aurocs(id_a, oa), c,
                       f"ReAct clipping at p={percentile:g}")


def dice_at(view: ActivationView, sparsity: float) -> tuple[np.ndarray, EnergyShift]:
    """DICE at sparsity p on a precomputed view: (kept-weight mask (K, D), energies before/after)."""
    mask = dice_mask(view.V, sparsity)
    id_a = dice_energy(view.id_feats, view.W, view.b, mask)
    oa = {k: dice_energy(v, view.W, view.b, mask) for k, v in view.ood_feats.items()}
    return mask, EnergyShift(view.id_energy, id_a, view.ood_energy, oa, view.auroc_energy, _aurocs(id_a, oa), None,
                             f"DICE sparsity p={sparsity:g}")


def ash_at(view: ActivationView, percentile: float, mode: str = "s") -> tuple[dict[str, AshPruning], EnergyShift]:
    """ASH at percentile p on a precomputed view: ({set: pruning fractions}, energies before/after)."""
    sets = {ID_NAME: view.id_feats, **view.ood_feats}
    pruning = {k: ash_pruned_fraction(v, percentile) for k, v in sets.items()}
    id_a = energy(ash_shape(view.id_feats, percentile, mode), view.W, view.b)
    oa = {k: energy(ash_shape(v, percentile, mode), view.W, view.b) for k, v in view.ood_feats.items()}
    return pruning, EnergyShift(view.id_energy, id_a, view.ood_energy, oa, view.auroc_energy, _aurocs(id_a, oa),
                                None, f"ASH-{mode.upper()} at p={percentile:g}")
