"""Open-set recognition models: reciprocal points (RPL / ARPL) as a training regime of the classifier, and the small
networks that OpenGAN and C2AE train on a classifier's penultimate features.

Reciprocal points (Chen et al., ECCV 2020; TPAMI 2021). Each known class k has a learnable point P_k in feature space
that stands for "everything that is not class k"; the logit of class k is the distance of the features h to P_k:

    RPL:   d(h, P_k) = ||h - P_k||^2 / D
    ARPL:  d(h, P_k) = ||h - P_k||^2 / D - h.P_k

and the training loss is cross-entropy on these logits (temperature 1) plus lambda times an open-space term on the
distance to the sample's own class point, d_e = ||h - P_y||^2 / D, with a learnable radius R: (d_e - R)^2 in RPL, the
margin term max(0, d_e - R + 1) in ARPL (their code's MarginRankingLoss). ARPL+CS (the regime arpl_cs) is ARPL plus
the confusing samples of a small GAN trained beside the classifier (models.openset_generative.ConfusingSamples).

Both distances are a linear function of h plus the class-independent term ||h||^2 / D:

    d(h, P_k) = (W h + b)_k + ||h||^2 / D,   W = -(2/D + a) P,  b_k = ||P_k||^2 / D,  a = 1 for ARPL, 0 for RPL,

so the classifier keeps its ordinary linear head: training writes (W, b) into `model.head` after every step, the
checkpoint is an ordinary state_dict of the same architecture, softmax and argmax are exactly those of the distance
logits, and the `rpl` detector adds ||h||^2 / D back to score the distances themselves.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from ..device import resolve_device
from ..jobs import check_cancelled
from .reproducible import seeded_init_

RECIPROCAL_REGIMES = ("rpl", "arpl", "arpl_cs", "rpl_closedset", "arpl_closedset")
ADVERSARIAL_REGIMES = ("arpl", "arpl_cs", "arpl_closedset")  # the ARPL distance (minus h.P_k) and margin term
RPL_WEIGHT = 0.1  # lambda of the open-space term (the authors' code: weight_pl = 0.1)
RPL_TEMPERATURE = 1.0  # the authors' code: temp = 1
ARPL_MARGIN = 1.0  # MarginRankingLoss(margin=1) of the authors' code
POINT_INIT_STD = 0.1  # the authors' code: centers = 0.1 * randn(K, D)


def reciprocal_logits(h: torch.Tensor, points: torch.Tensor, adversarial: bool) -> torch.Tensor:
    """The distance logits (n, K): ||h - P_k||^2 / D, minus h.P_k for ARPL (`adversarial`)."""
    d = h.shape[1]
    sq = (h * h).sum(1, keepdim=True) - 2.0 * h @ points.T + (points * points).sum(1)[None, :]
    logits = sq / d
    return logits - h @ points.T if adversarial else logits


def reciprocal_loss(h: torch.Tensor, targets: torch.Tensor, points: torch.Tensor, radius: torch.Tensor,
                    adversarial: bool, weight: float = RPL_WEIGHT, temperature: float = RPL_TEMPERATURE) -> torch.Tensor:
    """Cross-entropy on the distance logits plus `weight` times the open-space term of the sample's own class point:
    mean (d_e - R)^2 (RPL) or mean max(0, d_e - R + margin) (ARPL), d_e = ||h - P_y||^2 / D."""
    ce = nn.functional.cross_entropy(reciprocal_logits(h, points, adversarial) / temperature, targets)
    own = (h - points[targets]).pow(2).mean(1)
    open_space = torch.relu(own - radius + ARPL_MARGIN).mean() if adversarial else (own - radius).pow(2).mean()
    return ce + weight * open_space


def linear_head(points: torch.Tensor, adversarial: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) with W h + b + ||h||^2 / D = reciprocal_logits(h, points): W = -(2/D + a) P, b = ||P_k||^2 / D."""
    d = points.shape[1]
    scale = 2.0 / d + (1.0 if adversarial else 0.0)
    return -scale * points, (points * points).sum(1) / d


class ReciprocalPoints:
    """The training-time state of the RPL / ARPL regime: one reciprocal point per class and the radius R.

    Attached to a classifier, it catches the features its head receives (after dropout, as the head sees them),
    gives the regime's loss from them, and `write_head()` keeps the head equal to the points' linear form (the head's
    own weights are not trained). `detach()` removes the hook when training ends.
    """

    def __init__(self, model: nn.Module, regime: str, gen: torch.Generator):
        if regime not in RECIPROCAL_REGIMES:
            raise ValueError(f"reciprocal points are the regimes {', '.join(RECIPROCAL_REGIMES)}, not {regime!r}")
        head = model.head
        if not isinstance(head, nn.Linear) or head.bias is None:
            raise ValueError("reciprocal point learning needs a classifier whose head is a linear layer with a bias")
        k, d = head.weight.shape
        self.adversarial = regime in ADVERSARIAL_REGIMES
        self.head = head
        device = head.weight.device
        self.points = nn.Parameter((POINT_INIT_STD * torch.randn(k, d, generator=gen)).to(device))
        self.radius = nn.Parameter(torch.zeros((), device=device))
        for p in head.parameters():
            p.requires_grad_(False)
        self._features: Optional[torch.Tensor] = None
        self._hook = head.register_forward_pre_hook(self._catch)
        self.write_head()

    def _catch(self, module: nn.Module, args: tuple) -> None:
        self._features = args[0]

    def parameters(self) -> list[nn.Parameter]:
        return [self.points, self.radius]

    def loss(self, targets: torch.Tensor) -> torch.Tensor:
        """The regime's loss on the features of the last forward pass of the model."""
        if self._features is None:
            raise RuntimeError("run the model on a batch before asking for the reciprocal points' loss")
        return reciprocal_loss(self._features, targets, self.points, self.radius, self.adversarial)

    @torch.no_grad()
    def write_head(self) -> None:
        w, b = linear_head(self.points, self.adversarial)
        self.head.weight.copy_(w)
        self.head.bias.copy_(b)

    def detach(self) -> None:
        self._hook.remove()
        self._features = None
        for p in self.head.parameters():
            p.requires_grad_(True)


# --- networks trained post hoc on penultimate features (OpenGAN, C2AE) ------------------------------------------

ReportFn = Optional[Callable[[float, str], None]]
INPUT_BOUND = 4.0  # OpenGAN's discriminator sees b tanh(h / b) of the standardised features: a box of +-b ID stds


class FeatureScaler:
    """Per-dimension standardisation fitted on ID training features, so one learning rate fits any network's scale."""

    def __init__(self, h: np.ndarray):
        h = np.asarray(h, dtype=np.float64)
        self.mean = torch.from_numpy(h.mean(axis=0).astype(np.float32))
        self.std = torch.from_numpy(np.maximum(h.std(axis=0), 1e-6 * max(1.0, float(h.std()))).astype(np.float32))

    def __call__(self, h: np.ndarray) -> torch.Tensor:
        return (torch.as_tensor(np.asarray(h, dtype=np.float32)) - self.mean) / self.std


def _mlp(sizes: list[int], act: Callable[[], nn.Module], bias_first: bool = False) -> list[nn.Module]:
    """Linear - BatchNorm - activation blocks between consecutive sizes (the 1x1-convolution blocks of OpenGAN)."""
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b, bias=bias_first), nn.BatchNorm1d(b), act()]
    return layers


class OpenGANGenerator(nn.Module):
    """OpenGAN-fea's generator as an MLP: z (noise_dim) -> 8w -> 4w -> 2w -> 4w -> D (BatchNorm, ReLU; linear output)."""

    def __init__(self, noise_dim: int, dim: int, width: int):
        super().__init__()
        self.net = nn.Sequential(*_mlp([noise_dim, 8 * width, 4 * width, 2 * width, 4 * width], lambda: nn.ReLU()),
                                 nn.Linear(4 * width, dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class OpenGANDiscriminator(nn.Module):
    """OpenGAN-fea's discriminator as an MLP: D -> 8w -> 4w -> 2w -> w -> 1 (BatchNorm, LeakyReLU 0.2); outputs the
    logit of P(h is a real closed-set feature).

    Its input (standardised features) is first bounded softly, b tanh(h / b) with b = INPUT_BOUND: nearly unchanged near
    the ID data, while everything far away lands near the faces of the box [-b, b]^D, which the box fakes of
    `train_opengan` cover, so D's answer there is learned rather than extrapolated."""

    def __init__(self, dim: int, width: int):
        super().__init__()
        self.net = nn.Sequential(*_mlp([dim, 8 * width, 4 * width, 2 * width, width], lambda: nn.LeakyReLU(0.2)),
                                 nn.Linear(width, 1, bias=False))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.inside(INPUT_BOUND * torch.tanh(h / INPUT_BOUND))

    def inside(self, v: torch.Tensor) -> torch.Tensor:
        """D's logit for points `v` already in the box (the bounded input)."""
        return self.net(v)[:, 0]


def train_opengan(real: torch.Tensor, steps: int, width: int, noise_dim: int, lr: float, batch_size: int,
                  gen: torch.Generator, device: Optional[str] = None, report: ReportFn = None, cancel=None,
                  box_fakes: float = 0.0, outliers: Optional[torch.Tensor] = None) -> OpenGANDiscriminator:
    """The OpenGAN game on features, for `steps` updates of each network: D learns real (ID training features, label 1)
    against G(z) (label 0) with binary cross-entropy; G learns to make D say 1. Adam (lr, betas 0.5 / 0.999) for
    both, as the paper's code; batches run through the shuffled features epoch after epoch.

    `outliers` (features of auxiliary outliers, or None): the paper's outlier exposure, a batch of them drawn each
    step and labelled 0 beside the fakes. `box_fakes`: the weight of a third term, D's cross-entropy on a batch of
    points drawn uniformly from the box its bounded input lives in, labelled fake and scored with BatchNorm's running
    statistics (as at test time, and without moving them). Without it, D learns only the real features against the
    generator's, which stay close to them, and elsewhere (far from the data) its answer is an extrapolation that may
    call features "real". Every random number (weights, batch order, noise) comes from `gen`; `cancel` is checked
    between steps, `report(fraction, message)` called about 20 times. Returns the discriminator, in eval mode."""
    device = resolve_device(device)
    n, dim = real.shape
    if n < 2:
        raise ValueError(f"OpenGAN needs at least two ID training samples, found {n}")
    g_net = seeded_init_(OpenGANGenerator(noise_dim, dim, width), gen).to(device)
    d_net = seeded_init_(OpenGANDiscriminator(dim, width), gen).to(device)
    opt_d = torch.optim.Adam(d_net.parameters(), lr=lr, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(g_net.parameters(), lr=lr, betas=(0.5, 0.999))
    bce = nn.functional.binary_cross_entropy_with_logits
    every = max(1, steps // 20)
    g_net.train()
    d_net.train()
    step = 0
    while step < steps:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            if step == steps:
                break
            check_cancelled(cancel)
            xb = real[idx].to(device)
            z = torch.randn(len(idx), noise_dim, generator=gen).to(device)
            fake = g_net(z)
            if outliers is not None:
                fake_d = torch.cat([fake.detach(), outliers[torch.randint(0, len(outliers), (len(idx),),
                                                                          generator=gen)].to(device)])
            else:
                fake_d = fake.detach()
            opt_d.zero_grad(set_to_none=True)
            # one pass over real and fake together: BatchNorm sees the mixture it will see at eval (running stats)
            both = d_net(torch.cat([xb, fake_d]))
            d_real, d_fake = both[:len(idx)], both[len(idx):]
            loss_d = bce(d_real, torch.ones_like(d_real)) + bce(d_fake, torch.zeros_like(d_fake))
            if box_fakes > 0:  # scored as at test time (running statistics), so they do not move BatchNorm's
                box = INPUT_BOUND * (2.0 * torch.rand(len(idx), dim, generator=gen) - 1.0)
                d_net.eval()
                d_box = d_net.inside(box.to(device))
                d_net.train()
                loss_d = loss_d + box_fakes * bce(d_box, torch.zeros_like(d_box))
            loss_d.backward()
            opt_d.step()
            opt_g.zero_grad(set_to_none=True)
            d_gen = d_net(torch.cat([xb, fake]))[len(idx):]
            bce(d_gen, torch.ones_like(d_gen)).backward()
            opt_g.step()
            step += 1
            if report is not None and (step % every == 0 or step == steps):
                report(step / steps, f"OpenGAN: step {step}/{steps}")
    return d_net.eval()


class ConditionedAutoencoder(nn.Module):
    """C2AE on features: encoder D -> 2w -> latent, FiLM conditioning z_k = gamma(l_k) * z + beta(l_k) with the
    condition vector l_k (+1 at class k, -1 elsewhere), decoder latent -> 2w -> D."""

    def __init__(self, dim: int, num_classes: int, width: int, latent: int):
        super().__init__()
        self.num_classes = num_classes
        self.encoder = nn.Sequential(nn.Linear(dim, 2 * width), nn.ReLU(), nn.Linear(2 * width, latent))
        self.gamma = nn.Linear(num_classes, latent)
        self.beta = nn.Linear(num_classes, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, 2 * width), nn.ReLU(), nn.Linear(2 * width, dim))

    def condition(self, classes: torch.Tensor) -> torch.Tensor:
        """The condition vectors (n, K): +1 at each row's class, -1 elsewhere."""
        return 2.0 * nn.functional.one_hot(classes, self.num_classes).float() - 1.0

    def reconstruct(self, z: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Decode latents `z` under the condition of `classes` (one class per row)."""
        l = self.condition(classes)
        return self.decoder(self.gamma(l) * z + self.beta(l))

    @torch.no_grad()
    def errors(self, h: torch.Tensor) -> torch.Tensor:
        """Mean absolute reconstruction error (n, K) of each row of `h` under each class's condition."""
        z = self.encoder(h)
        n, k = len(h), self.num_classes
        classes = torch.arange(k, device=h.device).repeat(n)
        rec = self.reconstruct(z.repeat_interleave(k, dim=0), classes)
        return (rec - h.repeat_interleave(k, dim=0)).abs().mean(1).view(n, k)


def train_c2ae(h: torch.Tensor, y: torch.Tensor, num_classes: int, epochs: int, width: int, latent: int,
               alpha: float, lr: float, batch_size: int, gen: torch.Generator, device: Optional[str] = None,
               report: ReportFn = None, cancel=None) -> ConditionedAutoencoder:
    """C2AE's conditional training (Oza & Patel 2019): L = alpha * |h - dec(z, l_y)|_1 + (1 - alpha) * |h_nm -
    dec(z, l_c)|_1, with c != y a random non-match condition and h_nm a random training sample of another class than y.

    Adam; every random number (weights, batch order, non-match draws) from `gen`; `cancel` checked between batches."""
    device = resolve_device(device)
    n, dim = h.shape
    model = seeded_init_(ConditionedAutoencoder(dim, num_classes, width, latent), gen).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    by_class = [torch.nonzero(y == c).flatten() for c in range(num_classes)]
    other_count = n - torch.tensor([len(ix) for ix in by_class])
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n, batch_size):
            check_cancelled(cancel)
            idx = perm[i:i + batch_size]
            hb, yb = h[idx].to(device), y[idx]
            shift = torch.randint(1, num_classes, (len(idx),), generator=gen)
            non_match = (yb + shift) % num_classes  # uniform over the K - 1 other classes
            # a random sample of another class than y: a uniform draw among the n - n_y others
            pick = torch.minimum((torch.rand(len(idx), generator=gen) * other_count[yb]).long(), other_count[yb] - 1)
            targets = _other_class_sample(by_class, yb, pick)
            z = model.encoder(hb)
            match = (model.reconstruct(z, yb.to(device)) - hb).abs().mean()
            miss = (model.reconstruct(z, non_match.to(device)) - h[targets].to(device)).abs().mean()
            loss = alpha * match + (1.0 - alpha) * miss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if report is not None:
            report(epoch / epochs, f"C2AE: epoch {epoch}/{epochs}")
    return model.eval()


def _other_class_sample(by_class: list[torch.Tensor], classes: torch.Tensor, pick: torch.Tensor) -> torch.Tensor:
    """For each row, the `pick`-th training index (0-based) among the samples whose class is not that row's class."""
    sizes = torch.tensor([len(ix) for ix in by_class])
    everyone = torch.cat(by_class)  # indices grouped by class
    starts = torch.cumsum(sizes, 0) - sizes
    # the pick-th of the others: skip the own class's block when the pick reaches it
    pos = pick + torch.where(pick >= starts[classes], sizes[classes], torch.zeros_like(pick))
    return everyone[pos]
