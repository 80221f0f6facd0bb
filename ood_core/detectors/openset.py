"""Open-set recognition detectors: OpenMax's explicit unknown class, the reciprocal-point distances of an RPL / ARPL
classifier, OpenGAN's discriminator and C2AE's class-conditioned reconstruction on the penultimate features, CROSR's
OpenMax on logits and latents, OSRCI's counterfactual-trained unknown class and G-OpenMax's OpenMax beside a generated
unknown class."""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import brentq

from ..device import resolve_device
from ..models.openset import FeatureScaler, train_c2ae, train_opengan
from ..models.openset_generative import layer_means
from ..models.reproducible import training_threads
from .classic import stratified_subsample
from .base import Detector, FitContext, NotFittedError, Param, Reference, logsumexp, register, row_reduce

# libMR's MR() default: the tail is shifted so its smallest value sits at this amount before the Weibull fit
LIBMR_TRANSLATE = 10000.0
EUCOS_EU_WEIGHT = 1.0 / 200.0  # the paper's code: euclidean / 200 + cosine


def fit_weibull_high(data: np.ndarray, tail_size: int,
                     translate: float = LIBMR_TRANSLATE) -> tuple[float, float, float]:
    """libMR's FitHigh: a 2-parameter Weibull, by maximum likelihood, on the `tail_size` largest values.

    As libMR, the tail is shifted to t = tail + translate - small_score first, small_score = the tail's smallest
    value; returns (shape k, log scale, small_score). The MLE shape solves the profile equation sum w_i u_i / sum w_i - 1/k - mean(u) = 0 with
    u_i = log(t_i / t_max), w_i = exp(k u_i) (scale-free, so the large shape that the shift causes never
    overflows); log scale = log t_max + log(mean w) / k. A tail of equal values gives a step at that value.
    """
    tail = np.sort(np.asarray(data, dtype=np.float64).reshape(-1))[-int(tail_size):]
    if len(tail) < 2:
        raise ValueError("a Weibull tail needs at least two values")
    small = float(tail[0])
    t = tail + translate - small
    if t[0] <= 0:
        raise ValueError("translate must be positive")
    u = np.log1p((tail - tail[-1]) / t[-1])  # log(t / t_max) <= 0, from exact differences of the raw tail
    mean_u = u.mean()

    def g(log_k: float) -> float:
        k = np.exp(log_k)
        w = np.exp(k * u)
        return float((w * u).sum() / w.sum() - 1.0 / k - mean_u)

    lo, hi = np.log(1e-6), np.log(1e15)
    log_k = brentq(g, lo, hi, xtol=1e-12) if g(hi) > 0 else hi  # g(hi) <= 0 only for a constant tail
    k = float(np.exp(log_k))
    log_scale = float(np.log(t[-1]) + np.log(np.exp(k * u).mean()) / k)
    return k, log_scale, small


def weibull_high_cdf(x: np.ndarray, shape: float, log_scale: float, small: float,
                     translate: float = LIBMR_TRANSLATE) -> np.ndarray:
    """libMR's W_score for a FitHigh model: the Weibull CDF at x + translate - small (0 where that is <= 0)."""
    t = np.asarray(x, dtype=np.float64) + translate - small
    with np.errstate(divide="ignore"):
        z = shape * (np.log(np.maximum(t, 0.0)) - log_scale)
    return np.where(t > 0, -np.expm1(-np.exp(np.minimum(z, 700.0))), 0.0)


def av_distance(v: np.ndarray, mavs: np.ndarray, kind: str) -> np.ndarray:
    """Distances (n, K) between activation vectors v (n, K) and the class MAVs (K, K): euclidean, cosine or eucos."""
    v = np.asarray(v, dtype=np.float64)
    eu = np.stack([np.linalg.norm(v - m, axis=1) for m in mavs], axis=1)  # direct differences: no cancellation
    if kind == "euclidean":
        return eu
    norms = np.maximum(np.linalg.norm(v, axis=1)[:, None] * np.linalg.norm(mavs, axis=1)[None, :], 1e-300)
    cos = 1.0 - (v @ mavs.T) / norms  # scipy.spatial.distance.cosine
    return cos if kind == "cosine" else eu * EUCOS_EU_WEIGHT + cos


@register
class OpenMax(Detector):
    """OpenMax: recalibrate the top logits with per-class Weibull models of the distance to the class's mean logits.

    Activation vectors are the logits (as in the paper). Per class c: the mean activation vector (MAV) of the ID train
    samples of class c that are classified correctly, and a Weibull fitted as libMR's FitHigh (MLE on the tail_size
    largest distances of those samples to their MAV, shifted by libMR's default 10000; no native libMR) whose CDF
    is the probability that a distance is an outlier's. For the alpha top-ranked classes of x (rank r = 1..alpha),
    w_c = 1 - ((alpha - r + 1) / alpha) * CDF_c(d(v, MAV_c)), w = 1 elsewhere; v^_c = v_c w_c, the unknown logit is
    v_0 = sum_c v_c (1 - w_c), and the score is the unknown class's probability in softmax(v^, v_0) over K + 1
    (the convention of OpenOOD's openmax postprocessor). Distances: the paper's eucos (euclidean / 200 + cosine),
    euclidean (OpenOOD) or cosine.
    """

    name = "openmax"
    title = "OpenMax"
    family = "open_set"
    formula = ("S(x) = softmax(v^_1..v^_K, v_0)_0,  v^_c = v_c w_c,  v_0 = sum_c v_c (1 - w_c),  "
               "w_c = 1 - (alpha - rank_c + 1)/alpha * WeibullCDF_c(d(v, MAV_c)) for the top-alpha classes")
    latex = (r"S(x) = \frac{e^{\hat v_0}}{e^{\hat v_0} + \sum_c e^{\hat v_c}},\quad \hat v_c = v_c\,w_c,\ "
             r"\hat v_0 = \sum_c v_c (1 - w_c),\ w_c = 1 - \tfrac{\alpha - r_c + 1}{\alpha}\,"
             r"F_c\big(d(v, \mu_c)\big)")
    intuition = ("Each class learns, with extreme value theory, how far its correctly classified training logits "
                 "fall from their mean. Logits far from every class's mean hand their mass to an explicit "
                 "'unknown' class, whose probability is the score.")
    reference = Reference("Abhijit Bendale, Terrance E. Boult", "Towards Open Set Deep Networks", "CVPR", 2016,
                          "https://arxiv.org/abs/1511.06233")
    needs = ("logits",)
    min_classes = 2
    params = {
        "tail_size": Param(20, 2, 1000, "log", kind="int", sweep=(5, 10, 20, 50, 100),
                           help="number of largest distances the Weibull is fitted to (paper and OpenOOD: 20)"),
        "alpha": Param(3, 1, 100, "linear", kind="int", sweep=(1, 2, 3, 5, 10),
                       help="number of top classes recalibrated, clipped to K (OpenOOD: 3; paper: 10 of 1000)"),
        "distance": Param("eucos", kind="choice", choices=("eucos", "euclidean", "cosine"),
                          help="distance to the MAV: eucos = euclidean/200 + cosine (paper), euclidean (OpenOOD)"),
    }

    def _fit(self, ctx):
        v = np.asarray(ctx.train.logits, dtype=np.float64)
        self.mavs_, self.weibull_ = fit_openmax(v, v, np.asarray(ctx.train.labels), self.tail_size, self.distance)

    def _score(self, out):
        v = np.asarray(out.logits, dtype=np.float64)
        return openmax_unknown(v, v, self.mavs_, self.weibull_, self.alpha, self.distance)


def fit_openmax(av: np.ndarray, logits: np.ndarray, labels: np.ndarray, tail_size: int, distance: str,
                method: str = "OpenMax") -> tuple[np.ndarray, np.ndarray]:
    """OpenMax's fit on activation vectors `av` (n, M): per class c, the MAV of the ID train samples of class c that
    `logits` classify correctly and libMR's FitHigh Weibull of their `distance`s to it. Returns (MAVs (K, M), Weibull
    parameters (K, 3): shape, log scale, small score)."""
    y = np.asarray(labels)
    correct = logits.argmax(axis=1) == y
    mavs, weibulls = [], []
    for c in range(logits.shape[1]):
        v = av[correct & (y == c)]
        if len(v) < 2:
            raise ValueError(f"{method} needs at least two correctly classified ID train samples of class {c}, "
                             f"found {len(v)}")
        mav = v.mean(axis=0)
        mavs.append(mav)
        weibulls.append(fit_weibull_high(av_distance(v, mav[None], distance)[:, 0], tail_size))
    return np.stack(mavs), np.array(weibulls)


def openmax_recalibrate(av: np.ndarray, logits: np.ndarray, mavs: np.ndarray, weibull: np.ndarray, alpha: int,
                        distance: str) -> np.ndarray:
    """OpenMax's recalibrated logits (n, K + 1): the Weibull CDFs of the distances of `av` to the class MAVs recalibrate
    the alpha top-ranked `logits` v (n, K): w_c = 1 - ((alpha - r + 1) / alpha) CDF_c, v^_c = v_c w_c, and the last
    column is the unknown logit v_0 = sum_c v_c (1 - w_c)."""
    n, k = logits.shape
    cdf = weibull_high_cdf(av_distance(av, mavs, distance), *weibull.T)
    alpha = min(int(alpha), k)
    ranked = np.argsort(-logits, axis=1, kind="stable")[:, :alpha]
    omega = np.zeros_like(logits)
    np.put_along_axis(omega, ranked, np.broadcast_to((alpha - np.arange(alpha)) / alpha, (n, alpha)), axis=1)
    w = 1.0 - omega * cdf
    return np.concatenate([logits * w, (logits * (1.0 - w)).sum(axis=1, keepdims=True)], axis=1)


def openmax_unknown(av: np.ndarray, logits: np.ndarray, mavs: np.ndarray, weibull: np.ndarray, alpha: int,
                    distance: str) -> np.ndarray:
    """OpenMax's unknown probability softmax(v^, v_0)_0 (openmax_recalibrate)."""
    z = openmax_recalibrate(av, logits, mavs, weibull, alpha, distance)
    return np.exp(z[:, -1] - logsumexp(z))


@register
class ReciprocalPointScore(Detector):
    """RPL / ARPL: minus the largest distance of the features to the classes' reciprocal points.

    A classifier trained in the rpl, arpl or arpl_cs regime (models.openset; ARPL+CS is ARPL trained beside a GAN's
    confusing samples, models.openset_generative) keeps the linear form of its distance logits in
    its head: d(h, P_k) = (W h + b)_k + ||h||^2 / D. The score adds the class-independent ||h||^2 / D back to the
    largest logit, so it is the authors' max-distance score exactly (their code scores by the largest logit; RPL's
    also by the largest softmax, which is MSP on the same model, since softmax ignores the shift).
    """

    name = "rpl"
    title = "RPL / ARPL (reciprocal points)"
    family = "open_set"
    formula = ("S(x) = -max_k d(h, P_k),  d = ||h - P_k||^2 / D (RPL)  or  ||h - P_k||^2 / D - h.P_k (ARPL), "
               "P_k learned with the classifier")
    latex = (r"S(x) = -\max_k d(h, P_k),\quad d(h, P_k) = \tfrac{1}{D}\lVert h - P_k\rVert^2 \ "
             r"\big(- h^\top P_k \text{ for ARPL}\big)")
    intuition = ("Each class learns a reciprocal point that stands for everything that is not that class, and a "
                 "known sample lies far from its own class's point; training also bounds the space around the points, "
                 "so unknown samples fall in that middle region, close to every reciprocal point, and score high.")
    reference = (Reference("Guangyao Chen, Limeng Qiao, Yemin Shi, Peixi Peng, Jia Li, Tiejun Huang, Shiliang Pu, "
                           "Yonghong Tian", "Learning Open Set Network with Discriminative Reciprocal Points", "ECCV",
                           2020, "https://arxiv.org/abs/2011.00178"),
                 Reference("Guangyao Chen, Peixi Peng, Xiangqian Wang, Yonghong Tian",
                           "Adversarial Reciprocal Points Learning for Open Set Recognition", "IEEE TPAMI", 2021,
                           "https://arxiv.org/abs/2103.00953"))
    needs = ("logits", "features")
    regimes = ("rpl", "arpl", "arpl_cs", "rpl_closedset", "arpl_closedset")
    min_classes = 2

    def _score(self, out):
        h = np.asarray(out.features, dtype=np.float64)
        z = np.asarray(out.logits, dtype=np.float64)
        return -(row_reduce(np.maximum, z) + np.einsum("nd,nd->n", h, h) / h.shape[1])


def _device(ctx: FitContext) -> str:
    """Where a detector's own small networks train: the classifier's device, else the default one."""
    return resolve_device(ctx.model.device if ctx.model is not None else None)


def _fit_generator(ctx: FitContext, salt: int) -> torch.Generator:
    """The fit's own generator, seeded by the experiment's seed (never global state)."""
    return torch.Generator().manual_seed(int(ctx.seed) * 1_000_003 + salt)


def _auxiliary_features(ctx: FitContext) -> np.ndarray:
    """Penultimate features of as many auxiliary outliers as ID training images (outlier exposure's mixup and jigsaw
    of ID training images, data/auxiliary.py), seeded by the experiment. Both recipes commute with the per-channel
    normalisation (a convex blend, a permutation of tiles), so they are made from the normalised inputs directly."""
    from ..data.auxiliary import make_auxiliary

    if ctx.model is None or ctx.train.inputs is None:
        raise ValueError("OpenGAN with auxiliary outliers needs the classifier and its ID training images to embed "
                         "them; use outliers='none' here")
    aux = make_auxiliary(ctx.train.inputs, ctx.train.labels, len(ctx.train), ctx.seed)
    return ctx.model.forward(aux)[1]


@torch.no_grad()
def _batched_numpy(fn, x: torch.Tensor, device: str, batch_size: int = 1024) -> np.ndarray:
    parts = [fn(x[i:i + batch_size].to(device)).double().cpu().numpy() for i in range(0, len(x), batch_size)]
    return np.concatenate(parts) if parts else np.zeros(0)


@register
class OpenGAN(Detector):
    """OpenGAN-fea: a discriminator trained to tell the ID training features from a generator's fakes.

    A small MLP generator and discriminator (the paper's 1x1-convolution networks on features, widths 8w..w) play the
    GAN game on the ID training features, standardised with their mean and std. No outlier exposure by default;
    outliers="auxiliary" adds the paper's: the features of auxiliary outliers made from ID training images (mixup and
    jigsaw, as the oe regime uses; disjoint from every test set), labelled fake beside the generator's.

    Not in the paper: D sees its input softly bounded to a box of +-4 ID standard deviations and also learns points
    drawn uniformly from that box as fake (loss weight `box_fakes`; 0 gives the paper's game), because a ReLU
    discriminator extrapolates linearly away from everything it saw and may call features far from the data "real":
    a Gaussian cluster against uniform features in a box around it scores AUROC 0.59-0.78 over three seeds without
    them, 0.99-1.00 with them. On real OSR splits (mean over three) they move AUROC from 92.0 to 89.1 on the digits
    and from 89.2 to 91.6 on the MNIST sample (seeds 10-12, not the benchmark's splits).

    The score is -D(h), as D's logit (the same ranking as its sigmoid, without saturating). The paper picks the epoch
    on a validation set with outliers; with ID data alone the training length is a fixed number of steps, since D
    gets worse when trained much longer (mean AUROC on the same MNIST-sample splits: 0.93 after 5 epochs of 15 steps,
    0.63 after 60). "Tune on validation" (tuning.tune) picks `steps` from its sweep as the paper does, by the AUROC
    on the experiment's OOD validation sets (in OSR: the unknown classes' validation images, never the test ones),
    one training per value; it tunes no other parameter (tune_params).
    """

    name = "opengan"
    title = "OpenGAN (discriminator on features)"
    family = "open_set"
    formula = ("S(x) = -D(h),  D trained on ID training features (real) against a generator's fakes G(z) "
               "(and uniform points in the box D sees)")
    latex = r"S(x) = -D(h),\quad \min_G \max_D\ \mathbb{E}_{h \sim \mathrm{ID}} \log D(h) + " \
            r"\mathbb{E}_z \log\big(1 - D(G(z))\big)"
    intuition = ("The generator keeps producing features that are almost, but not quite, like the ID ones, so the "
                 "discriminator learns a tight boundary around the known classes' features. Unknown classes fall "
                 "outside it and get a low 'real' score.")
    reference = Reference("Shu Kong, Deva Ramanan", "OpenGAN: Open-Set Recognition via Open Data Generation", "ICCV",
                          2021, "https://arxiv.org/abs/2104.02939")
    needs = ("features",)
    trains_network = True
    tune_params = ("steps",)
    params = {
        "steps": Param(150, 10, 20000, "log", kind="int", sweep=(50, 100, 150, 300, 1000, 3000),
                       help="updates of each network, batches of 128 (the paper stops where a validation set with "
                            "outliers says; D gets worse when it trains much longer)"),
        "width": Param(32, 4, 128, "log", kind="int", sweep=(8, 16, 32, 64),
                       help="w: hidden layers of 8w, 4w, 2w and w units (the paper: 64 on 512-d features)"),
        "lr": Param(2e-4, 1e-5, 1e-2, "log", sweep=(5e-5, 1e-4, 2e-4, 5e-4, 1e-3),
                    help="Adam's learning rate for both networks (betas 0.5, 0.999)"),
        "outliers": Param("none", kind="choice", choices=("none", "auxiliary"),
                          help="none (default): ID features and fakes only; auxiliary: also the features of the "
                               "project's auxiliary outliers (mixup and jigsaw of ID training images), the paper's "
                               "outlier exposure"),
        "box_fakes": Param(0.5, 0.0, 1.0, "linear", sweep=(0.0, 0.1, 0.25, 0.5, 1.0),
                           help="weight of extra fakes drawn uniformly from the box of +-4 ID stds D sees, so it also "
                                "rejects features far from the data (0 = the paper's generator alone)"),
    }
    NOISE_DIM = 64
    BATCH_SIZE = 128

    def _fit(self, ctx):
        h = np.asarray(ctx.train.features)
        self.scaler_ = FeatureScaler(h)
        device = _device(ctx)
        outliers = self.scaler_(_auxiliary_features(ctx)) if self.outliers == "auxiliary" else None
        with training_threads(device):
            self.discriminator_ = train_opengan(
                self.scaler_(h), int(self.steps), int(self.width), self.NOISE_DIM, float(self.lr), self.BATCH_SIZE,
                _fit_generator(ctx, 1), device, ctx.report, ctx.cancel, float(self.box_fakes), outliers)
        self.device_ = device

    def _score(self, out):
        return -_batched_numpy(self.discriminator_, self.scaler_(out.features), self.device_)


@register
class C2AE(Detector):
    """C2AE on features: the smallest reconstruction error over the class-conditioned reconstructions.

    Here the autoencoder works on the classifier's penultimate features (standardised with the ID training mean and
    std) instead of decoding images from the frozen classifier's latent as the paper does: an MLP encoder, FiLM
    conditioning z_k = gamma(l_k) * z + beta(l_k) with l_k = +1 at class k and -1 elsewhere, an MLP decoder. It learns to
    reconstruct h under its own class's condition and, under another class's, a random sample of another class
    (weight 1 - alpha). The score is the smallest mean absolute error over the K conditions (the paper thresholds it
    with an extreme-value model; the ranking is the same). On a bank of more than `max_fit` features it trains on a
    seeded, class-stratified subsample of them (as OC-SVM and LOF fit), so 60,000 training images cost seconds.
    """

    name = "c2ae"
    title = "C2AE (class-conditioned autoencoder)"
    family = "open_set"
    formula = "S(x) = min_k mean |h - Dec(gamma_k * Enc(h) + beta_k)|,  (gamma_k, beta_k) = FiLM(condition of class k)"
    latex = r"S(x) = \min_k \tfrac{1}{D}\big\lVert h - \mathrm{Dec}\big(\gamma_k \odot \mathrm{Enc}(h) + " \
            r"\beta_k\big)\big\rVert_1"
    intuition = ("Told the right class, the decoder rebuilds a known sample well; told a wrong class, it was trained "
                 "to produce something else. An unknown sample matches no class, so even its best reconstruction "
                 "is poor.")
    reference = Reference("Poojan Oza, Vishal M. Patel", "C2AE: Class Conditioned Auto-Encoder for Open-set Recognition",
                          "CVPR", 2019, "https://arxiv.org/abs/1904.01198")
    needs = ("features",)
    trains_network = True
    min_classes = 2
    params = {
        "epochs": Param(30, 1, 500, "log", kind="int", sweep=(5, 10, 30, 60, 120),
                        help="passes over the ID training features"),
        "alpha": Param(0.9, 0.0, 1.0, "linear", sweep=(0.5, 0.7, 0.9, 1.0),
                       help="weight of the matched reconstruction; 1 - alpha for the non-match one (paper: 0.9)"),
        "latent": Param(32, 2, 256, "log", kind="int", sweep=(8, 16, 32, 64),
                        help="size of the code z the condition modulates"),
        "max_fit": Param(10_000, 100, 1_000_000, "log", kind="int", sweep=(2000, 5000, 10_000),
                         help="train on at most this many ID train features: a seeded subsample stratified by class "
                              "(all of them when there are fewer; the app says \"fit on N of M\"). The training's "
                              "cost grows with this number; every image is still scored"),
    }
    WIDTH = 128
    LR = 1e-3
    BATCH_SIZE = 128

    def _fit(self, ctx):
        h = np.asarray(ctx.train.features)
        y = np.asarray(ctx.train.labels)
        present = np.unique(y)
        k = int(ctx.num_classes) if ctx.num_classes else int(present.max(initial=-1)) + 1
        if len(present) < 2 or present.min() < 0 or present.max() >= k:
            raise ValueError(f"C2AE needs labelled ID training samples of at least two classes in 0..{max(k, 2) - 1}, "
                             f"found classes {present.tolist()}")
        self.scaler_ = FeatureScaler(h)  # the standardisation uses every ID train feature (cheap)
        self.n_bank_ = len(h)
        if int(self.max_fit) < len(h):  # a large bank: the training's cost is epochs x samples
            keep = stratified_subsample(y, int(self.max_fit), ctx.seed)
            h, y = h[keep], y[keep]
        self.n_fit_ = len(h)
        device = _device(ctx)
        with training_threads(device):
            self.model_ = train_c2ae(
                self.scaler_(h), torch.as_tensor(y, dtype=torch.long), k, int(self.epochs), self.WIDTH,
                int(self.latent), float(self.alpha), self.LR, self.BATCH_SIZE, _fit_generator(ctx, 2), device,
                ctx.report, ctx.cancel)
        self.device_ = device

    def errors(self, out) -> np.ndarray:
        """The reconstruction error (n, K) of each sample under each class's condition."""
        if not getattr(self, "fitted_", False):
            raise NotFittedError(f"{self.name} is not fitted: call fit(ctx) before errors()")
        return _batched_numpy(self.model_.errors, self.scaler_(out.features), self.device_, batch_size=256)

    def _score(self, out):
        return self.errors(out).min(axis=1)



@register
class CROSR(Detector):
    """CROSR: OpenMax on the joint activation vector [logits, latents] of a classifier trained with reconstruction.

    The classifier comes from the crosr regime (models.openset_generative): trained jointly with a top-down decoder that
    reconstructs the input from every convolutional layer, so those layers keep what the input looked like, not only
    what separates the known classes. The latents are the spatial means of those layers' activations (the paper's are
    their bottleneck outputs, which the checkpoint does not keep). OpenMax as in the `openmax` detector: per class the
    mean of the correctly classified ID training vectors and a Weibull of their distances to it, the top-alpha logits
    recalibrated by the CDF of the joint vector's distance; the score is the unknown class's probability.
    """

    name = "crosr"
    title = "CROSR (OpenMax on reconstruction latents)"
    family = "open_set"
    formula = ("S(x) = OpenMax unknown probability with the activation vector [f(x), z_1..z_L(x)], z_l = spatial "
               "mean of layer l of a classifier trained to classify and reconstruct x")
    latex = (r"S(x) = \mathrm{softmax}(\hat v_1..\hat v_K, \hat v_0)_0,\ w_c = 1 - \tfrac{\alpha - r_c + 1}{\alpha}"
             r"F_c\big(d([f(x), z(x)], \mu_c)\big),\ \hat v_c = f_c(x)\,w_c")
    intuition = ("Training to reconstruct the input makes every layer keep what the image looked like, not just what "
                 "tells the known classes apart. An unknown sample may fool the logits, but its latent description "
                 "lies far from every class's mean, so OpenMax hands its mass to the unknown class.")
    reference = Reference("Ryota Yoshihashi, Wen Shao, Rei Kawakami, Shaodi You, Makoto Iida, Takeshi Naemura",
                          "Classification-Reconstruction Learning for Open-Set Recognition", "CVPR", 2019,
                          "https://arxiv.org/abs/1812.04246")
    needs = ("logits", "model")
    runs_network = True
    regimes = ("crosr",)
    min_classes = 2
    params = dict(OpenMax.params)

    def activation_vectors(self, out, model=None) -> np.ndarray:
        """[logits, latents] (n, K + sum C_l) of a split: the latents from one more pass of the network."""
        adapter = model if model is not None else self.model_
        if out.inputs is None:
            raise ValueError("CROSR needs the input images of this split to read the latents; they were not kept")
        latents = layer_means(adapter.model, out.inputs, adapter.device, adapter.batch_size)
        return np.concatenate([np.asarray(out.logits, dtype=np.float64), latents], axis=1)

    def _fit(self, ctx):
        if ctx.model is None:
            raise ValueError("CROSR needs the model to read its latent representations")
        self.model_ = ctx.model
        logits = np.asarray(ctx.train.logits, dtype=np.float64)
        self.mavs_, self.weibull_ = fit_openmax(self.activation_vectors(ctx.train), logits, ctx.train.labels,
                                                self.tail_size, self.distance, "CROSR")

    def _score(self, out):
        return openmax_unknown(self.activation_vectors(out), np.asarray(out.logits, dtype=np.float64), self.mavs_,
                               self.weibull_, self.alpha, self.distance)


@register
class OSRCI(Detector):
    """OSRCI: the probability of the (K+1)th, 'unknown' class learned from generated counterfactual images.

    The classifier comes from the osrci regime (models.openset_generative): after its usual training, a GAN with an
    encoder learns the known classes' images, counterfactuals G(z*) are searched near each real image's code where no
    known class claims them, and the classifier is fine-tuned with them as a (K+1)th class whose logit is fixed at 0
    (softmax is shift-invariant, so the K-class head keeps it implicitly). form="unknown_probability" (default):
    1 / (1 + sum_k exp f_k(x)), that class's softmax probability; form="max_known_logit": -max_k f_k(x), the form
    Neal et al. report, which ignores the extra class at test time.
    """

    name = "osrci"
    title = "OSRCI (counterfactual unknown class)"
    family = "open_set"
    formula = ("S(x) = softmax(f_1..f_K, 0)_{K+1} = 1 / (1 + sum_k exp f_k(x)),  f fine-tuned with counterfactual "
               "images G(z*) as class K+1,  z* = argmin ||z - E(x)||^2 + log(1 + sum_k exp f_k(G(z)))")
    latex = (r"S(x) = \frac{1}{1 + \sum_k e^{f_k(x)}},\quad z^* = \arg\min_z \lVert z - E(x)\rVert^2 + "
             r"\log\Big(1 + \sum_k e^{f_k(G(z))}\Big)")
    intuition = ("A generator learns what the known classes look like; for each real image it searches a nearby image "
                 "that no known class claims, a counterfactual just across the boundary. Trained to call those "
                 "'unknown', the classifier hands real unknowns to that class too.")
    reference = Reference("Lawrence Neal, Matthew Olson, Xiaoli Fern, Weng-Keen Wong, Fuxin Li",
                          "Open Set Learning with Counterfactual Images", "ECCV", 2018,
                          "https://doi.org/10.1007/978-3-030-01231-1_38")
    needs = ("logits",)
    regimes = ("osrci",)
    params = {"form": Param("unknown_probability", kind="choice", choices=("unknown_probability", "max_known_logit"),
                             help="unknown_probability: the (K+1)th class's softmax probability (its logit fixed at "
                                  "0); max_known_logit: minus the largest known logit (the paper's reported form)")}

    def _score(self, out):
        z = np.asarray(out.logits, dtype=np.float64)
        if self.form == "max_known_logit":
            return -row_reduce(np.maximum, z)
        return np.exp(-logsumexp(np.concatenate([z, np.zeros((len(z), 1))], axis=1)))


@register
class GOpenMax(Detector):
    """G-OpenMax: OpenMax on a classifier fine-tuned with generated unknowns, both unknown outputs summed.

    The classifier comes from the gopenmax regime (models.openset_generative): a class-conditional GAN's mixtures of two
    known classes that the classifier does not assign to the dominant one become a (K+1)th class with its logit fixed at
    0. OpenMax as in the `openmax` detector, fitted on the fine-tuned K logits; softmax runs over the recalibrated known
    logits, the generated class's 0 and OpenMax's unknown logit v_0, and the score is the mass of the last two.
    """

    name = "gopenmax"
    title = "G-OpenMax (OpenMax with a generated unknown class)"
    family = "open_set"
    formula = ("S(x) = softmax(v^_1..v^_K, 0, v_0)_{K+1} + softmax(...)_{0},  v^, v_0: OpenMax's recalibration of the "
               "logits of a classifier fine-tuned with GAN mixtures of known classes as class K+1 (logit 0)")
    latex = (r"S(x) = \frac{e^{0} + e^{\hat v_0}}{\sum_c e^{\hat v_c} + e^{0} + e^{\hat v_0}},\quad \hat v_c = f_c(x)"
             r"\,w_c,\ \hat v_0 = \sum_c f_c(x)(1 - w_c)")
    intuition = ("A conditional GAN blends known classes into images that look like none of them; the classifier "
                 "learns them as an explicit unknown class. OpenMax then also moves mass from logits far from every "
                 "class's mean to the unknown.")
    reference = Reference("ZongYuan Ge, Sergey Demyanov, Zetao Chen, Rahil Garnavi",
                          "Generative OpenMax for Multi-Class Open Set Classification", "BMVC", 2017,
                          "https://arxiv.org/abs/1707.07418")
    needs = ("logits",)
    regimes = ("gopenmax",)
    min_classes = 2
    params = dict(OpenMax.params)

    def _fit(self, ctx):
        v = np.asarray(ctx.train.logits, dtype=np.float64)
        self.mavs_, self.weibull_ = fit_openmax(v, v, np.asarray(ctx.train.labels), self.tail_size, self.distance,
                                                "G-OpenMax")

    def _score(self, out):
        v = np.asarray(out.logits, dtype=np.float64)
        z = openmax_recalibrate(v, v, self.mavs_, self.weibull_, self.alpha, self.distance)
        z = np.concatenate([z[:, :-1], np.zeros((len(z), 1)), z[:, -1:]], axis=1)
        return np.exp(logsumexp(z[:, -2:]) - logsumexp(z))
