"""Uncertainty detectors: disagreement between stochastic passes (MC dropout) or between models (deep ensemble)."""
from __future__ import annotations

import copy
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from .base import Detector, Param, Reference, logsumexp, register

MEASURES = ("entropy", "mutual_info", "max_prob")
# elementwise dropout masks every unit; the channel-wise kinds mask whole channels
_ELEMENTWISE = (nn.Dropout,)
_CHANNELWISE = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)


def predictive_uncertainty(logits: np.ndarray, measure: str) -> np.ndarray:
    """Uncertainty of M predictions (M, n, K) of the same inputs, higher = more uncertain.

    entropy: H(mean_m p_m); mutual_info: H(mean_m p_m) - mean_m H(p_m) (the disagreement between the members);
    max_prob: -max_c mean_m p_mc.
    """
    z = np.asarray(logits, dtype=np.float64)
    logp = z - logsumexp(z, axis=2)[..., None]
    p = np.exp(logp)
    pbar = p.mean(axis=0)
    if measure == "max_prob":
        return -pbar.max(axis=1)
    log_pbar = logsumexp(logp, axis=0) - np.log(len(z))  # log of the mean, without underflow
    h_mean = -(pbar * log_pbar).sum(axis=1)
    if measure == "entropy":
        return h_mean
    if measure == "mutual_info":
        return np.maximum(h_mean - (-(p * logp).sum(axis=2)).mean(axis=0), 0.0)
    raise ValueError(f"unknown measure {measure!r}; choose one of {MEASURES}")


def dropout_layers(model: nn.Module) -> list[nn.Module]:
    layers = [m for m in model.modules() if isinstance(m, _ELEMENTWISE + _CHANNELWISE)]
    if not layers:
        raise ValueError("this model has no dropout layer, so MC dropout cannot run")
    return layers


@contextmanager
def fixed_dropout_masks(model: nn.Module, seed: int):
    """Dropout layers that apply one fixed mask per pass to every sample; yields `start_pass(t)`.

    The model stays in eval mode (BatchNorm uses running statistics); a forward hook replaces each dropout
    layer's output x by x * m_t / (1 - p). The mask m_t of layer l is drawn from a generator seeded with
    (seed, t, l), with the shape of one sample (elementwise dropout) or one value per channel (Dropout1d/2d/3d),
    so it does not depend on the batch size, the order of the samples or which other samples are scored.
    """
    layers = dropout_layers(model)
    state = {"pass": 0, "masks": {}}

    def make_hook(index: int, layer: nn.Module):
        def hook(module, inputs, output):
            x = inputs[0]
            if index not in state["masks"]:
                shape = tuple(x.shape[1:]) if isinstance(layer, _ELEMENTWISE) else (x.shape[1],) + (1,) * (x.dim() - 2)
                rng = np.random.default_rng([seed, state["pass"], index])
                keep = rng.random(shape) >= layer.p
                scale = 0.0 if layer.p >= 1 else 1.0 / (1.0 - layer.p)
                state["masks"][index] = torch.as_tensor(keep * scale, dtype=x.dtype, device=x.device)
            return x * state["masks"][index]
        return hook

    def start_pass(t: int) -> None:
        state["pass"], state["masks"] = t, {}

    was_training = model.training
    model.eval()
    handles = [m.register_forward_hook(make_hook(i, m)) for i, m in enumerate(layers)]
    try:
        yield start_pass
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def _dropout_acts_after_features(model: nn.Module, layer: nn.Module, xb: torch.Tensor) -> bool:
    """Whether model(x) == head(layer(features(x))) under the active masks: dropout only between features and head."""
    if not (hasattr(model, "features") and hasattr(model, "head")):
        return False
    return torch.allclose(model(xb), model.head(layer(model.features(xb))), rtol=1e-5, atol=1e-6)


def _shortcut_applies(model: nn.Module, layers: list[nn.Module], probe) -> bool:
    """mc_dropout_logits' shortcut test, with pass 0's masks active: one dropout layer, between features and head."""
    return probe is not None and len(layers) == 1 and _dropout_acts_after_features(model, layers[0], probe)


@torch.no_grad()
def reruns_head_only(adapter, inputs: np.ndarray) -> bool:
    """Whether mc_dropout_logits takes its shortcut on this model (the features once, then dropout and head on each
    pass) rather than running the whole network on every pass: the same test on the same first inputs, on a private
    copy of the network (estimates.py asks, before the detector runs). ValueError when the model has no dropout."""
    twin = _private(adapter)
    layers = dropout_layers(twin.model)
    with fixed_dropout_masks(twin.model, 0) as start_pass:
        start_pass(0)
        return _shortcut_applies(twin.model, layers, next(twin.batches(inputs[:8]), None))


@torch.no_grad()
def mc_dropout_logits(adapter, inputs: np.ndarray, passes: int, seed: int, shortcut: bool = True) -> np.ndarray:
    """Logits (passes, n, K) of the stochastic passes, with the fixed per-pass masks of `fixed_dropout_masks`.

    Shortcut: when the model's only dropout layer sits between `features` and `head` (checked on the first few
    inputs with pass 0's mask: a dropout inside `features` would be applied twice and fail the check), the features
    are computed once and each pass reruns only dropout and head; the result is the same as full passes.
    """
    model = adapter.model
    layers = dropout_layers(model)
    out = []
    with fixed_dropout_masks(model, seed) as start_pass:
        start_pass(0)
        if shortcut and _shortcut_applies(model, layers, next(adapter.batches(inputs[:8]), None)):
            feats = [model.features(xb) for xb in adapter.batches(inputs)]
            for t in range(passes):
                start_pass(t)
                out.append(np.concatenate([model.head(layers[0](h)).double().cpu().numpy() for h in feats]))
        else:
            for t in range(passes):
                start_pass(t)
                out.append(np.concatenate([model(xb).double().cpu().numpy() for xb in adapter.batches(inputs)]))
    return np.stack(out)


def _private(adapter):
    """The adapter over a copy of its network (same weights): the dropout hooks of the passes never touch the shared
    model, which a page or another job may be running at the same moment in another thread."""
    twin = copy.copy(adapter)
    twin.model = copy.deepcopy(adapter.model)
    return twin


@register
class MCDropout(Detector):
    """Monte Carlo dropout: T forward passes with dropout active, the uncertainty of the averaged prediction.

    Each pass t draws one dropout mask per layer, seeded by (FitContext.seed, t, layer), and applies it to every
    sample: one sampled network W_t ~ q(W) per pass, which is the Monte Carlo estimate of Gal & Ghahramani,
    p(y|x) ~ (1/T) sum_t p(y|x, W_t). Scores are therefore the same for any batch size, order of the samples or
    split they are scored in (torch's own dropout would draw masks by position in the batch stream).
    """

    name = "mc_dropout"
    title = "Monte Carlo dropout"
    family = "uncertainty"
    formula = "S(x) = H((1/T) sum_t softmax(f_t(x))),  f_t = the network with dropout mask t  (or mutual information)"
    latex = (r"S(x) = H\Big(\frac{1}{T}\sum_{t=1}^{T} \operatorname{softmax}\big(f_{W_t}(x)\big)\Big),\quad "
             r"W_t \sim q(W)\ \text{(dropout masks)}")
    intuition = ("Dropout at test time samples many slightly different networks. On familiar inputs they agree; "
                 "on unfamiliar ones their predictions scatter, so the averaged prediction is uncertain.")
    reference = Reference("Yarin Gal, Zoubin Ghahramani",
                          "Dropout as a Bayesian Approximation: Representing Model Uncertainty in Deep Learning",
                          "ICML", 2016, "https://arxiv.org/abs/1506.02142")
    needs = ("logits", "model")
    runs_network = True
    min_classes = 2
    params = {
        "passes": Param(20, 2, 100, "log", kind="int", sweep=(2, 5, 10, 20, 50, 100),
                        help="T: number of stochastic forward passes"),
        "measure": Param("entropy", kind="choice", choices=MEASURES,
                         help="entropy of the mean softmax, mutual information (disagreement), or -max mean softmax"),
    }

    def _fit(self, ctx):
        self.model_ = ctx.model
        self.seed_ = int(ctx.seed)
        dropout_layers(self.model_.model)  # fail at fit time, not at the first score, when there is no dropout

    def _score(self, out):
        if out.inputs is None:
            raise ValueError("mc_dropout needs the input images of this split; they were not kept")
        return predictive_uncertainty(mc_dropout_logits(_private(self.model_), out.inputs, int(self.passes),
                                                        self.seed_), self.measure)


@register
class DeepEnsemble(Detector):
    """Deep ensemble: M networks trained from different initialisations, the uncertainty of their mean softmax.

    Member 0 is the main model (its logits are the cached ones); members 1..M-1 come from
    FitContext.member_models(i), which trains or loads them (reporting to FitContext.progress, stopping between
    members and trainings' batches when FitContext.cancel is set), and forward the split's inputs batched. The paper's
    OOD experiments use the predictive entropy of the averaged softmax, the default measure here.
    """

    name = "ensemble"
    title = "Deep ensemble"
    family = "uncertainty"
    formula = "S(x) = H((1/M) sum_m softmax(f_m(x))),  f_1..f_M trained from different initialisations"
    latex = r"S(x) = H\Big(\frac{1}{M}\sum_{m=1}^{M} \operatorname{softmax}\big(f_m(x)\big)\Big)"
    intuition = ("Networks trained from different random starts agree on inputs like their training data but "
                 "extrapolate differently elsewhere, so their averaged prediction is uncertain on unfamiliar inputs.")
    reference = Reference("Balaji Lakshminarayanan, Alexander Pritzel, Charles Blundell",
                          "Simple and Scalable Predictive Uncertainty Estimation using Deep Ensembles", "NeurIPS", 2017,
                          "https://arxiv.org/abs/1612.01474")
    needs = ("logits", "model")
    runs_network = True
    min_classes = 2
    params = {
        "members": Param(5, 2, 10, "linear", kind="int", sweep=(2, 3, 5, 7, 10),
                         help="M: number of networks (paper: 5); each extra one is trained once, then cached"),
        "measure": Param("entropy", kind="choice", choices=MEASURES,
                         help="entropy of the mean softmax (paper), mutual information, or -max mean softmax"),
    }

    def _fit(self, ctx):
        if ctx.member_models is None:
            raise ValueError("the deep ensemble needs the other members' models (FitContext.member_models); "
                             "none were given")
        m = int(self.members)
        self.members_ = []
        for k, i in enumerate(range(1, m)):  # cancellable between members (and between a training's batches)
            ctx.check_cancelled()
            ctx.report(k / (m - 1), f"ensemble member {i + 1} of {m}")
            if ctx.progress is None:
                self.members_.append(ctx.member_models(i))
            else:
                def on_epoch(p, k=k, i=i):
                    ctx.report((k + p.epoch / p.epochs) / (m - 1),
                               f"training ensemble member {i + 1} of {m}: epoch {p.epoch}/{p.epochs}")
                self.members_.append(ctx.member_models(i, on_epoch))
        ctx.report(1.0, f"{m} ensemble members ready")

    def _score(self, out):
        if out.inputs is None:
            raise ValueError("ensemble needs the input images of this split; they were not kept")
        logits = [np.asarray(out.logits, dtype=np.float64)]
        logits += [m.forward(out.inputs)[0].astype(np.float64) for m in self.members_]
        return predictive_uncertainty(np.stack(logits), self.measure)
