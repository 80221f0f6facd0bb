"""Activation shaping: rectify or prune the penultimate activations, then score with the energy."""
from __future__ import annotations

import numpy as np

from ..linalg import feature_mean, map_chunks, row_chunks
from .base import Detector, Param, Reference, logsumexp, register


def _energy_by_chunks(features: np.ndarray, shape, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """energy_of(shape(h), W, b) over chunks of rows of the features, in worker threads: bounded memory.

    `shape` gets the chunk in the features' own dtype (masks and comparisons are exact there, and half the bytes
    of float64) and returns float64 values."""
    out = np.empty(len(features))

    def chunk_energy(sl):
        out[sl] = energy_of(shape(features[sl]), weight, bias)

    for _ in map_chunks(chunk_energy, row_chunks(len(features), features.shape[1])):
        pass
    return out


def exact_percentile(a: np.ndarray, q, axis: int | None = None):
    """np.percentile(a as float64, q, axis) ("linear"), without a float64 copy of a: the order statistics come
    from np.partition of a in its own floating dtype (its values are exact in float64), the interpolation is
    numpy's, in float64. q: a number, or a sequence (then a list, one result per q). axis: None (all values) or
    0 (per column, by blocks of columns in worker threads). NaN: as np.percentile."""
    a = np.asarray(a)
    qs = [q] if np.ndim(q) == 0 else list(q)
    if a.dtype.kind != "f" or a.dtype.itemsize > 8:
        res = [np.percentile(np.asarray(a, dtype=np.float64), x, axis=axis) for x in qs]
    elif axis is None:
        res = [float(v[0]) for v in _row_percentiles(a.reshape(1, -1), qs)]
    else:
        res = [np.empty(a.shape[1]) for _ in qs]
        width = int(max(8, (4 << 20) // max(1, len(a))))  # ~16 MB of float32 per block of columns

        def block(cols):
            for out, v in zip(res, _row_percentiles(np.ascontiguousarray(a[:, cols].T), qs)):
                out[cols] = v

        for _ in map_chunks(block, [slice(j, j + width) for j in range(0, a.shape[1], width)]):
            pass
    return res[0] if np.ndim(q) == 0 else res


def _row_percentiles(rows: np.ndarray, qs) -> list[np.ndarray]:
    """Per row of `rows` (r, n), the "linear" percentiles qs, float64 (see exact_percentile)."""
    n = rows.shape[1]
    # one selection per q, each in what lies above the previous one (np.partition with several kth values, or
    # two adjacent ones, was measured several times slower); the next order statistic is the smallest above
    part, offset = rows, 0
    out = {}
    for x in sorted(set(qs)):
        virtual = (n - 1) * (np.float64(x) / 100)
        lo_i = int(np.floor(virtual))
        if lo_i - offset < 0:  # q's this close share a rank with the previous one: select again from all values
            part, offset = rows, 0
        p = np.partition(part, lo_i - offset, axis=1)
        lo = p[:, lo_i - offset].astype(np.float64)
        above = p[:, lo_i - offset + 1:]
        hi = above.min(axis=1).astype(np.float64) if lo_i < n - 1 else lo
        gamma = virtual - lo_i
        diff = hi - lo
        out[x] = hi - diff * (1 - gamma) if gamma >= 0.5 else lo + diff * gamma  # numpy's _lerp
        part, offset = above, lo_i + 1
    return [out[x] for x in qs]


@register
class ReAct(Detector):
    name = "react"
    title = "ReAct (rectified activations)"
    family = "activation"
    formula = "S(x) = -log sum_c exp(W min(h(x), c) + b)_c,  c = p-th percentile of ID train activations"
    latex = (r"S(x) = -\log \sum_{k} \exp\big(W\,\bar h(x) + b\big)_k,\quad \bar h = \min(h, c),\ "
             r"c = \mathrm{perc}_p(h_{\mathrm{ID}})")
    intuition = ("OOD inputs trigger a few abnormally large penultimate activations that inflate the logits. "
                 "Clipping every unit at an ID percentile removes those spikes while barely touching ID inputs.")
    reference = Reference("Yiyou Sun, Chuan Guo, Yixuan Li",
                          "ReAct: Out-of-distribution Detection With Rectified Activations", "NeurIPS", 2021,
                          "https://arxiv.org/abs/2111.12797")
    needs = ("features", "model")
    params = {"percentile": Param(90.0, 50.0, 99.9, "linear", sweep=(70.0, 80.0, 85.0, 90.0, 95.0, 99.0),
                                  help="p: clip threshold = p-th percentile of all ID train activations")}

    def _fit(self, ctx):
        self.threshold_ = react_threshold(ctx.train.features, self.percentile)
        self.weight_ = ctx.model.head_weight
        self.bias_ = ctx.model.head_bias

    def _score(self, out):
        c = np.float64(self.threshold_)
        return _energy_by_chunks(out.features, lambda h: np.minimum(h, c, dtype=np.float64), self.weight_, self.bias_)


def energy_of(h: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """The energy score -log sum_k exp(W h + b)_k of (shaped) features h."""
    return -logsumexp(np.asarray(h, dtype=np.float64) @ np.asarray(weight, dtype=np.float64).T + bias)


def react_threshold(train_features: np.ndarray, percentile: float) -> float:
    """ReAct's clip c: the p-th percentile of all ID train activations, global over units and samples (the paper's code)."""
    return float(exact_percentile(train_features, percentile))


def react_score(h: np.ndarray, weight: np.ndarray, bias: np.ndarray, threshold: float) -> np.ndarray:
    """ReAct's score: the energy of the features clipped at c, -log sum_k exp(W min(h, c) + b)_k."""
    return energy_of(np.minimum(np.asarray(h, dtype=np.float64), float(threshold)), weight, bias)


def top_k_mask(h: np.ndarray, percentile: float) -> np.ndarray:
    """Per sample, True on the k = D - round(D p / 100) largest activations (at least one), as ASH's code counts k.

    Ties are broken by unit index (as a stable sort of -h would), so the mask depends on the sample alone. Found
    by selection, not sorting: each row's k-th largest value t (np.partition), every unit above t, and the first
    (k - #above) units equal to t.
    """
    d = h.shape[1]
    k = max(1, d - int(np.round(d * percentile / 100.0)))
    if k >= d:
        return np.ones(h.shape, dtype=bool)
    kth = np.partition(h, d - k, axis=1)[:, d - k, None]
    mask = h > kth
    tie = h == kth
    need = k - mask.sum(axis=1)
    excess = np.flatnonzero(tie.sum(axis=1) > need)  # rows where not every unit equal to t can be kept
    mask |= tie
    if excess.size:
        t = tie[excess]
        mask[excess] = (h[excess] > kth[excess]) | (t & (np.cumsum(t, axis=1, dtype=np.int32) <= need[excess, None]))
    return mask


def _sum_ratio(s1: np.ndarray, s2: np.ndarray) -> np.ndarray:
    # s2 = 0 only when every kept activation is 0 (h = 0 for ReLU features); the ratio then multiplies zeros
    return np.divide(s1, s2, out=np.ones_like(s1), where=s2 != 0)


def ash_prune(h: np.ndarray, percentile: float) -> np.ndarray:
    """ASH-P's shaping: h on each sample's top (100 - p)% units, 0 elsewhere (float64)."""
    return np.where(top_k_mask(h, percentile), np.asarray(h, dtype=np.float64), 0.0)


def ash_binarise(h: np.ndarray, percentile: float) -> np.ndarray:
    """ASH-B's shaping: s1 / k on the top-k units (s1 = the sum of h), 0 elsewhere (float64)."""
    mask = top_k_mask(h, percentile)
    s1 = np.asarray(h, dtype=np.float64).sum(axis=1, keepdims=True)
    return np.where(mask, s1 / mask.sum(axis=1, keepdims=True), 0.0)


def ash_scale(h: np.ndarray, percentile: float) -> np.ndarray:
    """ASH-S's shaping: ASH-P's pruned h times exp(s1 / s2), the sums of h before / after pruning (float64)."""
    pruned = ash_prune(h, percentile)
    s1 = np.asarray(h, dtype=np.float64).sum(axis=1)
    return pruned * np.exp(_sum_ratio(s1, pruned.sum(axis=1)))[:, None]


def dice_contribution(mean_h: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """DICE's contribution matrix V = W ⊙ mean ID train h (broadcast over classes), shape (K, D)."""
    return np.asarray(mean_h, dtype=np.float64)[None, :] * np.asarray(weight, dtype=np.float64)


def dice_mask(contribution: np.ndarray, sparsity: float) -> np.ndarray:
    """The weights DICE keeps: contributions strictly above the `sparsity`-th percentile of all of them."""
    return contribution > np.percentile(contribution, sparsity)


class _ASH(Detector):
    """Activation shaping (ASH): prune all but the top activations of each sample, then score with the energy.

    Here ASH shapes the 128-d penultimate vector h (the input of the head; h = ReLU(fc1(GAP(maps))) in the small
    CNN), the place the authors' README example puts it (after the average pooling, right before the classifier),
    not a convolutional feature map. k = D - round(D p / 100) activations are kept (ASH's code), ties broken by
    unit index so the result depends on the sample alone.
    """

    family = "activation"
    reference = Reference("Andrija Djurisic, Nebojsa Bozanic, Arjun Ashok, Rosanne Liu",
                          "Extremely Simple Activation Shaping for Out-of-Distribution Detection", "ICLR", 2023,
                          "https://arxiv.org/abs/2209.09858")
    needs = ("features", "model")
    params = {"percentile": Param(90.0, 10.0, 99.0, "linear", sweep=(50.0, 60.0, 65.0, 70.0, 80.0, 85.0, 90.0, 95.0),
                                  help="p: prune the activations below the per-sample p-th percentile "
                                       "(paper: 65 / 90; OpenOOD: 90)")}

    def _fit(self, ctx):
        self.weight_ = ctx.model.head_weight
        self.bias_ = ctx.model.head_bias

    def shape(self, h: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _score(self, out):
        return _energy_by_chunks(out.features, self.shape, self.weight_, self.bias_)


@register
class ASHP(_ASH):
    """ASH-P: keep the top (100 - p)% activations of h unchanged, set the rest to 0, then the energy (see _ASH)."""

    name = "ash_p"
    title = "ASH-P (activation shaping: prune)"
    formula = "S(x) = -log sum_k exp(W h' + b)_k,  h' = h on the top (100 - p)% units of h(x), 0 elsewhere"
    latex = (r"S(x) = -\log\sum_k \exp\big(W h' + b\big)_k,\quad h'_j = h_j\,[h_j \in \mathrm{top}_{(100-p)\%}(h)]")
    intuition = ("Most of what identifies the class of a familiar input sits in its few strongest activations. "
                 "Zeroing the weak rest removes noise that makes unfamiliar inputs look confident.")

    def shape(self, h):
        return ash_prune(h, self.percentile)


@register
class ASHB(_ASH):
    """ASH-B: the top k activations become s1 / k (s1 = the sum of all of h), the rest 0, then the energy (see _ASH)."""

    name = "ash_b"
    title = "ASH-B (activation shaping: binarise)"
    formula = "S(x) = -log sum_k exp(W h' + b)_k,  h' = (s1 / k) on the top-k units, 0 elsewhere,  s1 = sum_j h_j"
    latex = (r"S(x) = -\log\sum_k \exp\big(W h' + b\big)_k,\quad h'_j = \frac{s_1}{k}\,"
             r"[h_j \in \mathrm{top}_k(h)],\ s_1 = \textstyle\sum_j h_j")
    intuition = ("Keep only which units are among the strongest, and spread the total activation evenly over them. "
                 "The total activation is larger for familiar inputs, and the binarised pattern keeps the class.")

    def shape(self, h):
        return ash_binarise(h, self.percentile)


@register
class ASHS(_ASH):
    """ASH-S: prune as ASH-P, then scale by exp(s1 / s2), s1 / s2 the sums of h before / after pruning (see _ASH)."""

    name = "ash_s"
    title = "ASH-S (activation shaping: scale)"
    formula = "S(x) = -log sum_k exp(W h' + b)_k,  h' = exp(s1/s2) * (h on the top (100 - p)% units, 0 elsewhere)"
    latex = (r"S(x) = -\log\sum_k \exp\big(W h' + b\big)_k,\quad h' = e^{s_1/s_2}\, h \odot m,\ "
             r"s_1 = \textstyle\sum_j h_j,\ s_2 = \sum_j m_j h_j")
    intuition = ("After pruning, scaling up by how much activation was removed sharpens the energy gap: familiar "
                 "inputs keep most of their activation in the top units, unfamiliar ones spread it out.")

    def shape(self, h):
        return ash_scale(h, self.percentile)


@register
class SCALE(Detector):
    """SCALE: multiply the whole, unpruned feature by ASH-S's factor exp(s1 / s2), then score with the energy.

    s1 = sum of h, s2 = sum of its top (100 - p)% activations (pruning only measures the ratio). Only the feature
    is scaled, not the bias: logits = W (r h) + b, as in the paper's and OpenOOD's code (scale on the pooled feature,
    then the fc layer). Applied to the 128-d penultimate vector h, like ASH here.
    """

    name = "scale"
    title = "SCALE (activation scaling)"
    family = "activation"
    formula = ("S(x) = -log sum_k exp(W (r h) + b)_k,  r = exp(s1 / s2),  s1 = sum_j h_j,  "
               "s2 = sum of the top (100 - p)% h_j")
    latex = (r"S(x) = -\log\sum_k \exp\big(r\,W h + b\big)_k,\quad r = \exp\!\Big(\frac{\sum_j h_j}"
             r"{\sum_{j \in \mathrm{top}} h_j}\Big)")
    intuition = ("ASH's pruning changes which class the network predicts; SCALE keeps every activation and only "
                 "uses the pruning to measure how concentrated the activations are, scaling the logits by it.")
    reference = Reference("Kai Xu, Rongyu Chen, Gianni Franchi, Angela Yao",
                          "Scaling for Training Time and Post-hoc Out-of-distribution Detection Enhancement", "ICLR",
                          2024, "https://arxiv.org/abs/2310.00227")
    needs = ("features", "model")
    params = {"percentile": Param(85.0, 10.0, 99.0, "linear", sweep=(65.0, 70.0, 75.0, 80.0, 85.0, 90.0, 95.0),
                                  help="p: s2 sums the activations above the per-sample p-th percentile (OpenOOD: 85)")}

    def _fit(self, ctx):
        self.weight_ = ctx.model.head_weight
        self.bias_ = ctx.model.head_bias

    def _score(self, out):
        return _energy_by_chunks(out.features, self._scaled, self.weight_, self.bias_)

    def _scaled(self, h: np.ndarray) -> np.ndarray:
        mask = top_k_mask(h, self.percentile)
        h = np.asarray(h, dtype=np.float64)
        s2 = np.where(mask, h, 0.0).sum(axis=1)
        return h * np.exp(_sum_ratio(h.sum(axis=1), s2))[:, None]


@register
class DICE(Detector):
    """DICE: keep only the head weights with the largest contributions to ID train logits, then the energy.

    Contribution V = mean ID train h (D,) times W (K, D), entrywise; the mask keeps the entries above the p-th
    percentile of all K x D contributions (strictly greater, as the paper's and OpenOOD's code).
    """

    name = "dice"
    title = "DICE (directed sparsification)"
    family = "activation"
    formula = ("S(x) = -log sum_k exp((M . W) h + b)_k,  M = [hbar_j W_kj > p-th percentile of hbar * W],  "
               "hbar = mean ID h")
    latex = (r"S(x) = -\log\sum_k \exp\big((M \odot W)\,h + b\big)_k,\quad "
             r"M_{kj} = \big[\bar h_j W_{kj} > \mathrm{perc}_p(\bar h \odot W)\big]")
    intuition = ("On ID data only a few weights carry most of each logit; the rest add noise that can make "
                 "unfamiliar inputs look confident. Dropping the weak weights sharpens the energy gap.")
    reference = Reference("Yiyou Sun, Yixuan Li", "DICE: Leveraging Sparsification for Out-of-Distribution Detection",
                          "ECCV", 2022, "https://arxiv.org/abs/2111.09805")
    needs = ("features", "model")
    params = {"sparsity": Param(90.0, 0.0, 99.0, "linear", sweep=(0.0, 10.0, 30.0, 50.0, 70.0, 90.0, 95.0),
                                help="p: percent of the weights removed (paper and OpenOOD on CIFAR: 90)")}

    def _fit(self, ctx):
        w = ctx.model.head_weight
        h = ctx.train.features
        contrib = dice_contribution(feature_mean(h), w)
        self.mask_ = dice_mask(contrib, self.sparsity)
        self.weight_ = w * self.mask_
        self.bias_ = ctx.model.head_bias

    def _score(self, out):
        return _energy_by_chunks(out.features, lambda h: h, self.weight_, self.bias_)


@register
class VRA(Detector):
    """VRA (variational rectified activation), the piecewise function of the authors' code (`clip2`).

    Per unit j, with alpha_j and beta_j the q_low-th and q_high-th percentiles of unit j on ID train features (the
    authors' CIFAR setting, torch.quantile over samples per unit): h'_j = 0 if h_j < alpha_j, h_j + gamma if
    alpha_j <= h_j <= beta_j, beta_j if h_j > beta_j; then the energy. gamma = 0 is VRA, gamma > 0 is VRA+
    (the paper's simplified form). The authors' CIFAR-10 settings: VRA q = (60, 90); VRA+ q = (60, 95), gamma = 0.6.
    """

    name = "vra"
    title = "VRA (variational rectified activation)"
    family = "activation"
    formula = ("S(x) = -log sum_k exp(W h' + b)_k,  h'_j = 0 if h_j < alpha_j,  "
               "h_j + gamma if alpha_j <= h_j <= beta_j,  beta_j if h_j > beta_j")
    latex = (r"S(x) = -\log\sum_k \exp\big(W h' + b\big)_k,\quad h'_j = \begin{cases} 0 & h_j < \alpha_j \\ "
             r"h_j + \gamma & \alpha_j \le h_j \le \beta_j \\ \beta_j & h_j > \beta_j \end{cases}")
    intuition = ("ReAct only clips abnormally large activations; VRA also silences the small ones, which are "
                 "mostly noise for OOD inputs, and can lift the middle range that carries ID evidence.")
    reference = Reference("Mingyu Xu, Zheng Lian, Bin Liu, Jianhua Tao",
                          "VRA: Variational Rectified Activation for Out-of-distribution Detection", "NeurIPS", 2023,
                          "https://arxiv.org/abs/2302.11716")
    needs = ("features", "model")
    params = {
        "q_low": Param(60.0, 0.0, 99.0, "linear", sweep=(0.0, 30.0, 50.0, 60.0, 70.0, 80.0),
                       help="alpha = per-unit q_low-th percentile of ID train activations (authors, CIFAR-10: 60)"),
        "q_high": Param(90.0, 1.0, 100.0, "linear", sweep=(80.0, 85.0, 90.0, 95.0, 99.0, 100.0),
                        help="beta = per-unit q_high-th percentile of ID train activations (authors, CIFAR-10: 90)"),
        "gamma": Param(0.0, 0.0, 10.0, "linear", sweep=(0.0, 0.1, 0.3, 0.6, 1.0),
                       help="added to the kept middle range; 0 = VRA, > 0 = VRA+ (authors, CIFAR-10: 0.6)"),
    }

    def _fit(self, ctx):
        if self.q_low > self.q_high:
            raise ValueError(f"q_low ({self.q_low}) must not exceed q_high ({self.q_high})")
        self.alpha_, self.beta_ = exact_percentile(ctx.train.features, (self.q_low, self.q_high), axis=0)
        self.weight_ = ctx.model.head_weight
        self.bias_ = ctx.model.head_bias

    def _score(self, out):
        return _energy_by_chunks(out.features, self._shaped, self.weight_, self.bias_)

    def _shaped(self, h: np.ndarray) -> np.ndarray:
        h = np.asarray(h, dtype=np.float64)
        return np.where(h < self.alpha_, 0.0, np.where(h > self.beta_, self.beta_, h + self.gamma))
