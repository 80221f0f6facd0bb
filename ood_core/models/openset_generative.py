"""The open-set regimes that train extra networks in image space beside the classifier: ARPL+CS's confusing samples,
CROSR's hierarchical reconstruction and OSRCI's counterfactual images.

- ARPL+CS (Chen et al., TPAMI 2021; the regime arpl_cs). A small DCGAN plays beside the ARPL classifier: D learns real
  training images against G(z); G learns to fool D *and* to make the classifier unsure, minimising
  exp(-mean entropy of softmax(distance logits)) (their code's ARPLoss.fake_loss, weight beta = 0.1); the classifier
  minimises the same term on G's samples, so samples near the boundary between the reciprocal points get a flat
  prediction. Their code passes the fakes through their own BatchNorm statistics; here the classifier sees them in eval
  mode (running statistics, not moved by the fakes), so the ID statistics stay those of real images.
- CROSR (Yoshihashi et al., CVPR 2019; the regime crosr). The classifier is trained jointly with a top-down decoder
  that reconstructs the input from every convolutional layer's activations (each through a 1x1 bottleneck, the
  paper's latent z_l, then upsampled and merged level by level, as DHRNet's ladder). The decoder is discarded after
  training; the latents the `crosr` detector gives OpenMax are the spatial means of those layers' activations (the
  paper's bottlenecks are not kept, so the checkpoint stays an ordinary classifier of the registry's architecture).
- OSRCI (Neal et al., ECCV 2018; the regime osrci). After the usual training of the K-class classifier C: a DCGAN with
  an encoder E (G(E(x)) reconstructs x) on the known classes' training images; counterfactuals x* = G(z*),
  z* = argmin_z ||z - E(x)||^2 + log(1 + sum_k exp C_k(G(z))), images close to a real one that no known class claims;
  then C is fine-tuned on the training images plus the counterfactuals labelled as a (K+1)th class whose logit is fixed
  at 0 (softmax is shift-invariant, so a K+1-way classifier can always be written so): its cross-entropy is
  log(1 + sum_k exp C_k(x*)). The checkpoint keeps the K-class head; the `osrci` detector scores the (K+1)th class.

- G-OpenMax (Ge et al., BMVC 2017; the regime gopenmax). After the usual training: a class-conditional DCGAN on the
  known classes; images generated from mixtures of two classes' conditions that the classifier does not assign to the
  mixture's dominant class become a (K+1)th class (logit fixed at 0, the fine-tuning of OSRCI); the `gopenmax`
  detector then runs OpenMax on the fine-tuned classifier, the generated class counting as unknown too. (The paper
  trains a new K+1 classifier and keeps the samples its pre-trained classifier rejects; here the classifier is
  fine-tuned and the selection rule is the dominant-class one stated.)

Every weight and random number comes from the training call's generator; `cancel` is checked between batches.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional

import numpy as np
import torch
from torch import nn

from ..jobs import check_cancelled
from .reproducible import seeded_init_

GAN_NOISE_DIM = 32
GAN_WIDTH = 32  # channels of the generator's and discriminator's first convolution (the DCGAN's 64, halved)
GAN_LR = 2e-4  # Adam, betas (0.5, 0.999): DCGAN's, and ARPL's and OSRCI's code
CS_BETA = 0.1  # ARPL+CS: weight of the confusion term for G and for the classifier (their code: beta = 0.1)
CROSR_LATENT = 8  # channels of each layer's bottleneck latent z_l in the decoder
CROSR_WIDTH = 32  # channels of the decoder's blocks
CROSR_WEIGHT = 1.0  # the reconstruction term beside cross-entropy (the paper sums the two)
OSRCI_GAN_EPOCHS = 10  # passes of the GAN and encoder over the known training images
OSRCI_SEARCH_STEPS = 30  # Adam steps of the counterfactual search in latent space
OSRCI_SEARCH_LR = 0.05
OSRCI_FINETUNE_EPOCHS = 5  # passes of the classifier over training images + counterfactuals
OSRCI_FINETUNE_LR_SCALE = 0.1  # fine-tuning learning rate: this times the regime's peak learning rate
GOPENMAX_ROUNDS = 5  # G-OpenMax: rounds of n / K generated candidates at most, until n / K unknowns are kept


def extra_epochs(regime: str) -> int:
    """Passes a regime makes after the classifier's own epochs (OSRCI, G-OpenMax: the GAN's, then the fine-tuning's)."""
    return OSRCI_GAN_EPOCHS + OSRCI_FINETUNE_EPOCHS if regime in ("osrci", "gopenmax") else 0


class ImageGenerator(nn.Module):
    """DCGAN generator for side s (a multiple of 4): z -> 2w x s/4 x s/4 -> w x s/2 x s/2 -> C x s x s pixels in [0, 1]
    (sigmoid), then normalised with the benchmark's per-channel mean and std, like the classifier's inputs."""

    def __init__(self, noise_dim: int, channels: int, side: int, width: int, mean: np.ndarray, std: np.ndarray):
        super().__init__()
        if side % 4:
            raise ValueError(f"the image generator needs a side that is a multiple of 4, got {side}")
        self.s4, self.width = side // 4, width
        self.project = nn.Sequential(nn.Linear(noise_dim, 2 * width * self.s4 ** 2, bias=False))
        self.body = nn.Sequential(nn.BatchNorm2d(2 * width), nn.ReLU(),
                                  nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(), nn.ConvTranspose2d(width, channels, 4, 2, 1))
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, np.float32).reshape(1, -1, 1, 1)))
        self.register_buffer("std", torch.as_tensor(np.asarray(std, np.float32).reshape(1, -1, 1, 1)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        pixels = torch.sigmoid(self.body(self.project(z).view(len(z), 2 * self.width, self.s4, self.s4)))
        return (pixels - self.mean) / self.std


class ImageCritic(nn.Module):
    """DCGAN discriminator body: C x s x s -> w x s/2 -> 2w x s/4 (LeakyReLU 0.2) -> `out` numbers; the discriminator
    (out = 1, a logit of 'real') and OSRCI's encoder (out = the noise size)."""

    def __init__(self, channels: int, side: int, width: int, out: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2),
                                 nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * width),
                                 nn.LeakyReLU(0.2), nn.Flatten(), nn.Linear(2 * width * (side // 4) ** 2, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _adam(module: nn.Module) -> torch.optim.Adam:
    return torch.optim.Adam(module.parameters(), lr=GAN_LR, betas=(0.5, 0.999))


def _eval_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The classifier's logits for `x` in eval mode (BatchNorm's running statistics, which it leaves alone; no
    dropout), with gradients; the model goes back to the mode it was in."""
    was = model.training
    model.eval()
    try:
        return model(x)
    finally:
        model.train(was)


def confusion_loss(logits: torch.Tensor) -> torch.Tensor:
    """ARPL+CS's fake loss: exp(mean_n sum_k p_nk log p_nk), p = softmax(logits); the smallest (1/K) when every
    prediction is uniform. Softmax ignores a shift shared by all classes, so the head's logits give the distance
    logits' softmax."""
    logp = torch.log_softmax(logits.float(), dim=1)
    return (logp.exp() * logp).sum(1).mean().exp()


def _bce(logit: torch.Tensor, real: bool) -> torch.Tensor:
    target = torch.ones_like(logit) if real else torch.zeros_like(logit)
    return nn.functional.binary_cross_entropy_with_logits(logit, target)


class ConfusingSamples:
    """ARPL+CS's GAN, trained one step per classifier batch (`step`), and the classifier's term on its samples."""

    def __init__(self, channels: int, side: int, mean: np.ndarray, std: np.ndarray, gen: torch.Generator,
                 device: str):
        self.generator = seeded_init_(ImageGenerator(GAN_NOISE_DIM, channels, side, GAN_WIDTH, mean, std), gen)
        self.discriminator = seeded_init_(ImageCritic(channels, side, GAN_WIDTH, 1), gen)
        self.generator.to(device).train()
        self.discriminator.to(device).train()
        self.opt_g, self.opt_d = _adam(self.generator), _adam(self.discriminator)
        self.device = device

    def step(self, model: nn.Module, real: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """One update of D (real vs G(z)) and of G (fool D + CS_BETA * confusion of the classifier); returns the
        batch of confusing samples (detached) for the classifier's term."""
        z = torch.randn(len(real), GAN_NOISE_DIM, generator=gen).to(self.device)
        fake = self.generator(z)
        loss_d = _bce(self.discriminator(real), True) + _bce(self.discriminator(fake.detach()), False)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        loss_g = _bce(self.discriminator(fake), True) + CS_BETA * confusion_loss(_eval_forward(model, fake))
        params = list(self.generator.parameters())
        for p, g in zip(params, torch.autograd.grad(loss_g, params)):  # G's gradients only, not the classifier's
            p.grad = g
        self.opt_g.step()
        return fake.detach()

    @staticmethod
    def classifier_loss(model: nn.Module, fakes: torch.Tensor) -> torch.Tensor:
        """CS_BETA times the confusion loss of the classifier on the confusing samples (seen in eval mode)."""
        return CS_BETA * confusion_loss(_eval_forward(model, fakes))


def conv_relus(model: nn.Module) -> list[nn.Module]:
    """The model's nn.ReLU modules, in declaration order (those with 4-d outputs are CROSR's layers)."""
    return [m for m in model.modules() if isinstance(m, nn.ReLU)]


class LadderDecoder(nn.Module):
    """CROSR's top-down decoder: z_l = 1x1 bottleneck of layer l's activations; from the deepest layer up, each block
    merges the upsampled reconstruction so far with z_l (3x3 conv, ReLU); a last 3x3 conv gives the image."""

    def __init__(self, layer_channels: list[int], channels: int, side: int):
        super().__init__()
        self.side = side
        self.bottlenecks = nn.ModuleList(nn.Conv2d(c, CROSR_LATENT, 1) for c in layer_channels)
        deepest = len(layer_channels) - 1
        self.blocks = nn.ModuleList(nn.Conv2d(CROSR_LATENT + (0 if i == deepest else CROSR_WIDTH), CROSR_WIDTH, 3,
                                              padding=1) for i in range(len(layer_channels)))
        self.out = nn.Conv2d(CROSR_WIDTH, channels, 3, padding=1)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        d: Optional[torch.Tensor] = None
        for i in reversed(range(len(maps))):
            z = self.bottlenecks[i](maps[i])
            if d is not None:
                z = torch.cat([nn.functional.interpolate(d, size=z.shape[-2:]), z], dim=1)
            d = torch.relu(self.blocks[i](z))
        return self.out(nn.functional.interpolate(d, size=(self.side, self.side)))


class HierarchicalReconstruction:
    """CROSR's training-time state: hooks on the classifier's convolutional ReLU layers catch their activations in each
    forward pass, and `loss(x)` is the mean squared error of the ladder decoder's reconstruction of x from them.
    `detach()` removes the hooks; the decoder is not part of the checkpoint."""

    def __init__(self, model: nn.Module, channels: int, side: int, gen: torch.Generator, device: str):
        caught: dict[int, torch.Tensor] = {}
        relus = conv_relus(model)
        hooks = [m.register_forward_hook(lambda mod, i, o: caught.__setitem__(id(mod), o)) for m in relus]
        was = model.training
        model.eval()
        with torch.no_grad():  # one probe to learn which layers are convolutional and their channels
            model(torch.zeros(2, channels, side, side, device=device))
        model.train(was)
        self.layers = [m for m in relus if id(m) in caught and caught[id(m)].dim() == 4]
        for h in hooks:
            h.remove()
        if not self.layers:
            raise ValueError("CROSR reconstructs from convolutional layers, and this classifier has no nn.ReLU with "
                             "image-shaped outputs")
        self.decoder = seeded_init_(LadderDecoder([caught[id(m)].shape[1] for m in self.layers], channels, side), gen)
        self.decoder.to(device).train()
        self._maps: dict[int, torch.Tensor] = {}
        self._hooks = [m.register_forward_hook(self._catch) for m in self.layers]

    def _catch(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self._maps[id(module)] = output

    def parameters(self) -> list[nn.Parameter]:
        return list(self.decoder.parameters())

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """CROSR_WEIGHT times the mean squared reconstruction error of x from the last forward pass's activations."""
        if len(self._maps) != len(self.layers):
            raise RuntimeError("run the model on a batch before asking for its reconstruction loss")
        rec = self.decoder([self._maps[id(m)] for m in self.layers])
        return CROSR_WEIGHT * (rec.float() - x).pow(2).mean()

    def detach(self) -> None:
        for h in self._hooks:
            h.remove()
        self._maps.clear()


@torch.no_grad()
def layer_means(model: nn.Module, x: np.ndarray, device: str, batch_size: int = 256) -> np.ndarray:
    """CROSR's latents for OpenMax: the spatial mean of every convolutional ReLU layer's activations, (n, sum C_l), in
    eval mode, batched. (n, 0) for a model without such layers."""
    model.eval()
    caught: list[torch.Tensor] = []

    def hook(module, inputs, output):
        if output.dim() == 4:
            caught.append(output.mean(dim=(2, 3)))

    hooks = [m.register_forward_hook(hook) for m in conv_relus(model)]
    parts = []
    try:
        for i in range(0, len(x), batch_size):
            caught.clear()
            model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size])).to(device))
            parts.append((torch.cat(caught, dim=1) if caught else torch.zeros(len(x[i:i + batch_size]), 0))
                         .double().cpu().numpy())
    finally:
        for h in hooks:
            h.remove()
    return np.concatenate(parts) if parts else np.zeros((0, 0))


def unknown_logit_loss(logits: torch.Tensor) -> torch.Tensor:
    """OSRCI's open-set term: mean log(1 + sum_k exp z_k), the cross-entropy towards a (K+1)th class of logit 0."""
    z = logits.float()
    return torch.logsumexp(torch.cat([z, torch.zeros_like(z[:, :1])], dim=1), dim=1).mean()


def counterfactual_search(classifier: nn.Module, generator: ImageGenerator, z0: torch.Tensor,
                          steps: int = OSRCI_SEARCH_STEPS, lr: float = OSRCI_SEARCH_LR) -> torch.Tensor:
    """OSRCI's counterfactual latents: z* = argmin_z ||z - z0||^2 + log(1 + sum_k exp C_k(G(z))), by `steps` Adam steps
    from z0 (each row independent; the networks in eval mode and left untouched)."""
    was = classifier.training, generator.training
    classifier.eval()
    generator.eval()
    z = z0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    for _ in range(steps):
        z_logits = classifier(generator(z)).float()
        open_term = torch.logsumexp(torch.cat([z_logits, torch.zeros_like(z_logits[:, :1])], dim=1), dim=1)
        loss = ((z - z0.detach()).pow(2).sum(1) + open_term).sum()
        opt.zero_grad(set_to_none=True)
        (grad,) = torch.autograd.grad(loss, [z])
        z.grad = grad
        opt.step()
    classifier.train(was[0])
    generator.train(was[1])
    return z.detach()


def osrci_stages(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean: np.ndarray, std: np.ndarray,
                 gen: torch.Generator, device: str, lr: float, weight_decay: float, batch_size: int,
                 cancel=None) -> Iterator[tuple[str, float]]:
    """OSRCI after the classifier's own training, one yield (stage, mean loss) per pass: OSRCI_GAN_EPOCHS passes of the
    GAN with its encoder on the known training images `x`; the counterfactual search from E of one training image per
    K (a seeded draw, n / K images: as many counterfactuals as a known class has images); OSRCI_FINETUNE_EPOCHS passes
    fine-tuning the classifier on cross-entropy plus the unknown-class term on the counterfactuals."""
    channels, side = x.shape[1], x.shape[-1]
    k = int(y.max()) + 1
    g_net = seeded_init_(ImageGenerator(GAN_NOISE_DIM, channels, side, GAN_WIDTH, mean, std), gen).to(device)
    d_net = seeded_init_(ImageCritic(channels, side, GAN_WIDTH, 1), gen).to(device)
    e_net = seeded_init_(ImageCritic(channels, side, GAN_WIDTH, GAN_NOISE_DIM), gen).to(device)
    opt_d = _adam(d_net)
    opt_ge = torch.optim.Adam([*g_net.parameters(), *e_net.parameters()], lr=GAN_LR, betas=(0.5, 0.999))
    n = len(x)
    for _ in range(OSRCI_GAN_EPOCHS):
        g_net.train(), d_net.train(), e_net.train()
        perm, total = torch.randperm(n, generator=gen), 0.0
        for i in range(0, n, batch_size):
            check_cancelled(cancel)
            xb = x[perm[i:i + batch_size]].to(device)
            if len(xb) < 2:  # BatchNorm needs two samples
                continue
            fake = g_net(torch.randn(len(xb), GAN_NOISE_DIM, generator=gen).to(device))
            loss_d = _bce(d_net(xb), True) + _bce(d_net(fake.detach()), False)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            # G fools D; G(E(x)) reconstructs x, so E maps images to latents G turns back into them
            loss_ge = _bce(d_net(fake), True) + (g_net(e_net(xb)) - xb).pow(2).mean()
            opt_ge.zero_grad(set_to_none=True)
            loss_ge.backward()
            opt_ge.step()
            total += float(loss_ge.detach()) * len(xb)
        yield "GAN and encoder", total / n
    g_net.eval(), e_net.eval()
    count = max(1, math.ceil(n / k))
    seeds = x[torch.randperm(n, generator=gen)[:count]]
    found = []
    for i in range(0, count, batch_size):
        check_cancelled(cancel)
        with torch.no_grad():
            z0 = e_net(seeds[i:i + batch_size].to(device))
        z_star = counterfactual_search(model, g_net, z0)
        with torch.no_grad():
            found.append(g_net(z_star).cpu())
    yield from finetune_with_unknowns(model, x, y, torch.cat(found), gen, device, lr, weight_decay, batch_size,
                                      "fine-tuning with counterfactuals", cancel)


def finetune_with_unknowns(model: nn.Module, x: torch.Tensor, y: torch.Tensor, unknowns: torch.Tensor,
                           gen: torch.Generator, device: str, lr: float, weight_decay: float, batch_size: int,
                           stage: str, cancel=None) -> Iterator[tuple[str, float]]:
    """OSRCI_FINETUNE_EPOCHS passes of AdamW (lr * OSRCI_FINETUNE_LR_SCALE) over the known training images, each batch
    with a draw of the generated `unknowns` in proportion (len(unknowns) / len(x) of its size): cross-entropy on the
    known images plus unknown_logit_loss on the generated ones. One yield (stage, mean loss) per pass."""
    n, count = len(x), len(unknowns)
    opt = torch.optim.AdamW(model.parameters(), lr=lr * OSRCI_FINETUNE_LR_SCALE, weight_decay=weight_decay)
    cf_batch = max(1, round(batch_size * count / n))
    for _ in range(OSRCI_FINETUNE_EPOCHS):
        model.train()
        perm, total = torch.randperm(n, generator=gen), 0.0
        for i in range(0, n, batch_size):
            check_cancelled(cancel)
            idx = perm[i:i + batch_size]
            cf = unknowns[torch.randint(0, count, (cf_batch,), generator=gen)]
            both = model(torch.cat([x[idx], cf]).to(device))
            loss = (nn.functional.cross_entropy(both[:len(idx)], y[idx].to(device))
                    + unknown_logit_loss(both[len(idx):]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        yield stage, total / n
    model.eval()


class ConditionalCritic(nn.Module):
    """G-OpenMax's conditional discriminator: ImageCritic on the image with the class vector c as K constant planes."""

    def __init__(self, channels: int, side: int, width: int, num_classes: int):
        super().__init__()
        self.critic = ImageCritic(channels + num_classes, side, width, 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.critic(torch.cat([x, c[:, :, None, None].expand(-1, -1, *x.shape[-2:])], dim=1))


def mixed_conditions(num_classes: int, count: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` class vectors l e_a + (1 - l) e_b of two distinct classes a, b drawn uniformly, l ~ U(0, 1), and each
    vector's dominant class (a when l >= 1/2)."""
    a = torch.randint(0, num_classes, (count,), generator=gen)
    b = (a + torch.randint(1, num_classes, (count,), generator=gen)) % num_classes
    lam = torch.rand(count, generator=gen)
    eye = torch.eye(num_classes)
    return lam[:, None] * eye[a] + (1 - lam[:, None]) * eye[b], torch.where(lam >= 0.5, a, b)


def gopenmax_stages(model: nn.Module, x: torch.Tensor, y: torch.Tensor, mean: np.ndarray, std: np.ndarray,
                    gen: torch.Generator, device: str, lr: float, weight_decay: float, batch_size: int,
                    cancel=None) -> Iterator[tuple[str, float]]:
    """G-OpenMax after the classifier's own training, one yield (stage, mean loss) per pass: OSRCI_GAN_EPOCHS passes of
    a class-conditional GAN on the known training images; then mixtures of two known classes' conditions are generated
    (GOPENMAX_ROUNDS rounds of n / K candidates at most), and a candidate whose class the classifier does not find, its
    top class not the mixture's dominant one, is kept as an unknown; then the fine-tuning of `finetune_with_unknowns`
    with them as the (K+1)th class. When no candidate is kept, the last round's candidates serve."""
    channels, side = x.shape[1], x.shape[-1]
    k = int(y.max()) + 1
    g_net = seeded_init_(ImageGenerator(GAN_NOISE_DIM + k, channels, side, GAN_WIDTH, mean, std), gen).to(device)
    d_net = seeded_init_(ConditionalCritic(channels, side, GAN_WIDTH, k), gen).to(device)
    opt_g, opt_d = _adam(g_net), _adam(d_net)
    eye = torch.eye(k)
    n = len(x)
    for _ in range(OSRCI_GAN_EPOCHS):
        g_net.train(), d_net.train()
        perm, total = torch.randperm(n, generator=gen), 0.0
        for i in range(0, n, batch_size):
            check_cancelled(cancel)
            idx = perm[i:i + batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            xb, cb = x[idx].to(device), eye[y[idx]].to(device)
            fake = g_net(torch.cat([torch.randn(len(idx), GAN_NOISE_DIM, generator=gen).to(device), cb], dim=1))
            loss_d = _bce(d_net(xb, cb), True) + _bce(d_net(fake.detach(), cb), False)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            loss_g = _bce(d_net(fake, cb), True)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            total += float(loss_g.detach()) * len(idx)
        yield "conditional GAN", total / n
    g_net.eval()
    model.eval()
    count = max(1, math.ceil(n / k))
    kept: list[torch.Tensor] = []
    for _ in range(GOPENMAX_ROUNDS):
        check_cancelled(cancel)
        cond, dominant = mixed_conditions(k, count, gen)
        with torch.no_grad():
            cand = torch.cat([g_net(torch.cat([torch.randn(len(c), GAN_NOISE_DIM, generator=gen), c], dim=1)
                                    .to(device)).cpu() for c in cond.split(batch_size)])
            top = torch.cat([model(c.to(device)).argmax(1).cpu() for c in cand.split(batch_size)])
        kept.append(cand[top != dominant])
        if sum(len(t) for t in kept) >= count:
            break
    unknowns = torch.cat(kept)[:count]
    yield from finetune_with_unknowns(model, x, y, unknowns if len(unknowns) else cand, gen, device, lr, weight_decay,
                                      batch_size, "fine-tuning with generated unknowns", cancel)
