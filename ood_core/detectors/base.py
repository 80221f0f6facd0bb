"""The detector contract and the one registry of detectors.

Every detector returns an *unfamiliarity score*: higher = more OOD / unknown / novel / anomalous.
scikit-learn manners: `__init__` only stores parameters, `fit` returns self, learned state ends in `_`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Optional

import numpy as np

from ..inference import ModelAdapter, Outputs

# The survey's taxonomy (Salehi et al. 2022), as the registry groups detectors.
FAMILIES: dict[str, str] = {
    "output": "Classification-based, output scores: post-hoc functions of the logits or softmax.",
    "gradient": "Classification-based, input perturbation / gradients: need the network again for a backward pass.",
    "activation": "Classification-based, activation shaping: rectify or prune penultimate activations, then score.",
    "distance": "Distance-based: distance of the sample's features to the ID training features or class statistics.",
    "density": "Density-based: likelihood of the features under a model of the ID feature distribution.",
    "open_set": "Open-set recognition: an explicit unknown class (OpenMax), distances to learned reciprocal points, "
                "a discriminator of known features, or class-conditioned reconstruction.",
    "uncertainty": "Uncertainty: disagreement between stochastic passes or between models.",
    "classic": "Classic outlier detectors (scikit-learn) on the network's features.",
    "one_class": "One-class models: the score a model trained on normal data alone gives (hypersphere distance, "
                 "reconstruction error, self-supervised transformation prediction).",
}

NEEDS = ("logits", "features", "model", "feature_maps", "model_score")
# a linear slider with more steps than this is offered as a select slider of log-spaced values (Param.slider_options)
MAX_SLIDER_STEPS = 2000


@dataclass(frozen=True)
class Param:
    """A detector parameter: default, slider range and scale, and the sweep list for sensitivity plots."""

    default: Any
    low: Optional[float] = None
    high: Optional[float] = None
    scale: str = "linear"  # "linear" or "log"
    kind: str = "float"  # "float", "int" or "choice"
    sweep: tuple = ()
    choices: tuple = ()
    help: str = ""

    def validate(self, name: str, value: Any) -> Any:
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{name} must be one of {self.choices}, got {value!r}")
            return value
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {value!r}")
        if self.kind == "int":
            if v != int(v):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            v = int(v)
        if (self.low is not None and v < self.low) or (self.high is not None and v > self.high):
            raise ValueError(f"{name} must be in [{self.low}, {self.high}], got {value!r}")
        return v

    def grid(self, n: int = 25) -> list:
        """Log-spaced values over [low, high] (2 significant digits), always including the default, the sweep
        and both bounds; sorted, without repeats (ints for an int parameter). What a log-scale slider offers."""
        values = [_round_sig(v) for v in np.geomspace(self.low, self.high, n)]
        values += [self.default, *self.sweep, self.low, self.high]
        values = [int(round(v)) for v in values] if self.kind == "int" else [float(v) for v in values]
        return sorted({v for v in values if self.low <= v <= self.high})

    def slider_options(self) -> Optional[list]:
        """The values a select slider offers for this parameter, or None when a plain slider serves: the log grid of a
        log-scale parameter; for a linear float parameter from 0 whose plain slider would take more than
        MAX_SLIDER_STEPS steps (NCI's alpha: 0, then 1e-4 to 0.1 in [0, 10], 100,000 steps of 1e-4, so a pixel of
        dragging jumps past every value that matters), 0 and then the log grid from its smallest positive default or
        sweep value to the upper bound, five values a decade."""
        if self.kind == "choice" or self.low is None or self.high is None:
            return None
        if self.scale == "log" and self.low > 0:
            return self.grid()
        if self.kind != "float" or self.low != 0:
            return None
        step, _ = self.slider_step()
        positive = [float(v) for v in (self.default, *self.sweep) if float(v) > 0]
        if (self.high - self.low) / step <= MAX_SLIDER_STEPS or not positive or min(positive) >= self.high:
            return None
        decades = math.log10(self.high / min(positive))
        return [0.0, *replace(self, low=min(positive), scale="log").grid(max(2, round(5 * decades) + 1))]  # 5 a decade

    def slider_step(self) -> tuple[float, int]:
        """(step, decimals) of a linear slider: about a hundredth of the range, fine enough to hit the default
        and the sweep values exactly."""
        coarse = 10 ** np.floor(np.log10((self.high - self.low) / 100))
        decimals = max([_decimals(coarse), *(_decimals(v) for v in (self.default, *self.sweep))])
        return 10.0 ** -decimals, decimals


def _round_sig(x: float, digits: int = 2) -> float:
    return float(f"{x:.{digits}g}")


def _decimals(x: float) -> int:
    """How many decimals a value needs (0.0014 -> 4, 90.0 -> 0)."""
    text = np.format_float_positional(float(x), trim="-")
    return len(text.split(".")[1]) if "." in text else 0


@dataclass(frozen=True)
class Reference:
    """A paper a detector follows.

    `authors` lists every author as the paper does, full names separated by ", " (the surname is taken to be
    the last word of each name); `venue` is the conference or journal without the year; `url` is the paper's
    arXiv abstract or proceedings page, or "" when no link was checked.
    """

    authors: str
    title: str
    venue: str
    year: int
    url: str = ""

    def surnames(self) -> list[str]:
        return [name.split()[-1] for name in self.authors.split(", ") if name.strip()]

    def short(self) -> str:
        """E.g. "Hendrycks & Gimpel, ICLR 2017"; "First et al." for three or more authors."""
        s = self.surnames()
        who = s[0] if len(s) == 1 else f"{s[0]} & {s[1]}" if len(s) == 2 else f"{s[0]} et al."
        return f"{who}, {self.venue} {self.year}"

    def full(self) -> str:
        """Authors, Title, Venue Year."""
        return f"{self.authors}, {self.title}, {self.venue} {self.year}"

    def markdown(self) -> str:
        """The full reference with the title linked to the paper when there is a url."""
        title = f"[{self.title}]({self.url})" if self.url else self.title
        return f"{self.authors}, {title}, {self.venue} {self.year}"


@dataclass
class FitContext:
    """What a detector may fit on: ID data only (train and validation Outputs), and the model adapter."""

    train: Outputs
    val: Optional[Outputs] = None
    model: Optional[ModelAdapter] = None
    num_classes: int = 0
    # member_models(i) -> ModelAdapter of ensemble member i (same data, other initialisation), trained or cached;
    # an Experiment's also takes member_models(i, progress) with a training progress callback (models.Progress)
    member_models: Optional[Callable[..., ModelAdapter]] = None
    seed: int = 0
    extra: dict = field(default_factory=dict)
    # long fits (the ensemble's trainings): report progress(fraction, message), stop when `cancel` (an Event) is set
    progress: Optional[Callable[[float, str], None]] = None
    cancel: Any = None

    def report(self, fraction: float, message: str = "") -> None:
        """Tell whoever waits how far the fit is (0..1) and what it does now; nothing when nobody listens."""
        if self.progress is not None:
            self.progress(fraction, message)

    def check_cancelled(self) -> None:
        """jobs.Cancelled when the fit's job was cancelled; call between units of work."""
        from ..jobs import check_cancelled

        check_cancelled(self.cancel)


class NotFittedError(RuntimeError):
    pass


class Detector:
    """Base class. Subclasses set the class attributes and implement `_fit` (optional) and `_score`."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    family: ClassVar[str] = ""
    formula: ClassVar[str] = ""  # the decision score in one line, plain text
    latex: ClassVar[str] = ""  # the same, as LaTeX for st.latex
    intuition: ClassVar[str] = ""
    # the paper(s) the method follows: one Reference, or a tuple when it combines works
    reference: ClassVar["Reference | tuple[Reference, ...]"] = ()
    needs: ClassVar[tuple[str, ...]] = ("logits",)
    params: ClassVar[dict[str, Param]] = {}
    # True only for methods that must run the network again (input gradients, stochastic passes, other
    # models, feature maps); all others score from the cached Outputs of the one forward pass
    runs_network: ClassVar[bool] = False
    # True for methods whose fit trains a network of their own on the cached outputs (seconds on small data,
    # minutes on large): pages run them as jobs, as they do the methods that run the network again
    trains_network: ClassVar[bool] = False
    # the fewest ID classes the method is meaningful for (e.g. 2 for class-relative scores)
    min_classes: ClassVar[int] = 1
    # the training regimes (spec.REGIMES) whose classifiers the method scores; empty: any model
    regimes: ClassVar[tuple[str, ...]] = ()
    # for a method that trains a network of its own: the parameters tuning.tune may choose on OOD validation data
    # (each value tried is one more training); empty: such a method is not tuned. Other methods tune every parameter.
    tune_params: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def slow(cls) -> bool:
        """Whether the method runs the network again or trains one: pages run it as a job (progress, cancel)."""
        return cls.runs_network or cls.trains_network

    @classmethod
    def references(cls) -> tuple[Reference, ...]:
        """`reference` as a tuple (empty when the detector cites nothing)."""
        return (cls.reference,) if isinstance(cls.reference, Reference) else tuple(cls.reference)

    def __init__(self, **params: Any):
        unknown = set(params) - set(self.params)
        if unknown:
            raise ValueError(f"{self.name}: unknown parameter(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(self.params) or 'none'}")
        for pname, spec in self.params.items():
            setattr(self, pname, spec.validate(pname, params.get(pname, spec.default)))

    def get_params(self) -> dict[str, Any]:
        return {p: getattr(self, p) for p in self.params}

    def fit(self, ctx: FitContext) -> "Detector":
        if "model" in self.needs and ctx.model is None:
            raise ValueError(f"{self.name} needs the model, but none was given")
        self._fit(ctx)
        self.fitted_ = True
        return self

    def _fit(self, ctx: FitContext) -> None:
        pass

    def score(self, out: Outputs) -> np.ndarray:
        """Unfamiliarity scores, shape (n,), higher = more unfamiliar."""
        self._check_fitted()
        if len(out) == 0:
            return np.zeros(0)
        return np.asarray(self._score(out), dtype=np.float64).reshape(-1)

    def _check_fitted(self) -> None:
        if not getattr(self, "fitted_", False):
            raise NotFittedError(f"{self.name} is not fitted: call fit(ctx) before score()")

    def _score(self, out: Outputs) -> np.ndarray:
        raise NotImplementedError

    def neighbour_plan(self) -> Optional["NeighbourPlan"]:
        """The exact search over L2-normalised ID train features that this fitted detector's score rests on, when
        it can share one pass with other detectors searching the same features (score_together); None here."""
        return None

    def _score_from_search(self, out: Outputs, found: np.ndarray) -> np.ndarray:
        """The score from the result of neighbour_plan()'s search for out's normalised features."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


@dataclass
class NeighbourPlan:
    """How a fitted detector's score reads one exact search (neighbours.Search) of the L2-normalised query features
    against rows made from the ID train features `source()` (a weak reference: detectors fitted on the same array
    can share a pass). `base` holds the normalised rows themselves when this detector can reach them (KNN's bank;
    NNGuide's while they are shared), else None: the pass then needs a member that has them."""

    source: Callable[[], Optional[np.ndarray]]
    search: Any  # neighbours.Search
    base: Optional[np.ndarray] = None


def score_together(dets: "list[Detector]", out: Outputs) -> list[np.ndarray]:
    """Each fitted detector's scores on `out`, as det.score(out) gives them.

    Detectors whose scores rest on exact searches of the same normalised ID train features (KNN, NNGuide; any
    detector with a neighbour_plan) share ONE blocked pass of the query-bank matrix product, their dominant cost:
    the same numbers as scoring each alone (neighbours.shared_search), about half the time for the pair.
    """
    from ..neighbours import l2_normalise, shared_search

    for d in dets:
        d._check_fitted()
    results: list[Optional[np.ndarray]] = [None] * len(dets)
    groups: dict[int, tuple[np.ndarray, list]] = {}
    if len(out):
        for i, d in enumerate(dets):
            plan = d.neighbour_plan()
            source = plan.source() if plan is not None else None
            if source is not None:
                groups.setdefault(id(source), (source, []))[1].append((i, plan))
    for _, members in groups.values():
        base = next((p.base for _, p in members if p.base is not None), None)
        if base is None or len(members) < 2:
            continue  # nothing to share: each scores alone
        # searches that rescale the block in place go last (the block is theirs to overwrite)
        members.sort(key=lambda m: getattr(m[1].search, "scale", None) is not None)
        found = shared_search(l2_normalise(out.features), base, [p.search for _, p in members])
        for (i, _), f in zip(members, found):
            results[i] = np.asarray(dets[i]._score_from_search(out, f), dtype=np.float64).reshape(-1)
    return [r if r is not None else d.score(out) for r, d in zip(results, dets)]


REGISTRY: dict[str, type[Detector]] = {}


def shares_search(name: str) -> bool:
    """Whether detector `name` can share its neighbour search with others (score_together): it has a neighbour_plan."""
    cls = REGISTRY.get(name)
    return cls is not None and cls.neighbour_plan is not Detector.neighbour_plan


def register(cls: type[Detector]) -> type[Detector]:
    """Class decorator: add a detector to the registry under its `name`."""
    if not cls.name or cls.family not in FAMILIES:
        raise ValueError(f"{cls.__name__}: a detector needs a name and a family in {list(FAMILIES)}")
    if cls.name in REGISTRY:
        raise ValueError(f"detector name {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def default_params(name: str) -> dict[str, Any]:
    """Every parameter of detector `name` at its default value."""
    return {k: p.default for k, p in REGISTRY[name].params.items()}


def create(name: str, **params: Any) -> Detector:
    if name not in REGISTRY:
        raise KeyError(f"unknown detector {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name](**params)


# --- small numeric helpers shared by the families -------------------------------------------------

# numpy reduces each row in its own short inner loop: for rows of a few values (10 logits) that per-row cost
# dominates, so such rows are reduced column by column instead (K whole-array operations over n values)
SHORT_ROWS = 32


def _short_rows(z: np.ndarray) -> bool:
    return z.ndim == 2 and 1 <= z.shape[1] <= SHORT_ROWS and len(z) >= 256


def row_reduce(ufunc: np.ufunc, z: np.ndarray, keepdims: bool = False) -> np.ndarray:
    """ufunc.reduce(z, axis=1) of a 2-d array; column by column when rows are short (same values for max/min)."""
    if not _short_rows(z):
        return ufunc.reduce(z, axis=1, keepdims=keepdims)
    out = ufunc(z[:, 0], z[:, 1]) if z.shape[1] > 1 else z[:, 0].copy()
    for j in range(2, z.shape[1]):
        ufunc(out, z[:, j], out=out)
    return out[:, None] if keepdims else out


def logsumexp(z: np.ndarray, axis: int = 1) -> np.ndarray:
    z = np.asarray(z)
    if axis == 1 and _short_rows(z):
        # short rows: one transposed float64 copy, then every step is one contiguous pass over n values, in place
        # (the same operations in the same order as row by row, so the same bits, in about half the time)
        zt = np.array(z.T, dtype=np.float64, order="C")
        m = zt.max(axis=0)
        zt -= m
        np.exp(zt, out=zt)
        return m + np.log(zt.sum(axis=0))
    z = np.asarray(z, dtype=np.float64)
    if axis != 1 or z.ndim != 2:
        m = z.max(axis=axis, keepdims=True)
        return (m + np.log(np.exp(z - m).sum(axis=axis, keepdims=True))).squeeze(axis)
    m = z.max(axis=1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]


def softmax_columns(z: np.ndarray) -> np.ndarray:
    """softmax(z) of an (n, K) array, transposed: (K, n) float64, C-ordered. For short rows (K <= SHORT_ROWS) every
    step is a contiguous pass over n values in place, as in logsumexp: the same operations in the same order as
    row by row, so the same bits, several times faster."""
    e = np.array(np.asarray(z).T, dtype=np.float64, order="C")
    e -= e.max(axis=0)
    np.exp(e, out=e)
    e /= e.sum(axis=0)
    return e


def softmax(z: np.ndarray, axis: int = 1) -> np.ndarray:
    if axis == 1 and _short_rows(np.asarray(z)):
        return np.ascontiguousarray(softmax_columns(z).T)
    z = np.asarray(z, dtype=np.float64)
    if axis != 1 or z.ndim != 2:
        e = np.exp(z - z.max(axis=axis, keepdims=True))
        return e / e.sum(axis=axis, keepdims=True)
    e = np.exp(z - row_reduce(np.maximum, z, keepdims=True))
    return e / row_reduce(np.add, e, keepdims=True)


def max_softmax(z: np.ndarray) -> np.ndarray:
    """The classifier's confidence max_c softmax(z)_c per row (MSP's score is its negative); 0 rows give (0,)."""
    z = np.asarray(z, dtype=np.float64)
    if not z.size:
        return np.zeros(len(z))
    # = softmax(z).max(axis=1): the largest term of the softmax is exp(0) / sum = 1 / sum, bit for bit
    return 1.0 / row_reduce(np.add, np.exp(z - row_reduce(np.maximum, z, keepdims=True)))
