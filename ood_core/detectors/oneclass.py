"""The score of a one-class model itself (Deep SVDD, autoencoder, geometric transformations, LSA, OC-GAN, AnoGAN,
CSI, U-std, multiresolution KD)."""
from __future__ import annotations

import numpy as np

from .base import Detector, Reference, register


@register
class ModelScore(Detector):
    name = "model_score"
    title = "The one-class model's own score"
    family = "one_class"
    formula = ("S(x) = the model's anomaly score: ||phi(x) - c||^2 (Deep SVDD), (1/d) ||x - D(E(x))||^2 "
               "(autoencoder), -(1/T) sum_t log p(t | T_t(x)) (GeoTrans), REC~(x) + NLL~(z) (LSA), "
               "(1/d) ||x - De(En(x))||^2 (OC-GAN), "
               "min_z (1-lambda) ||x - G(z)||_1 + lambda ||f(x) - f(G(z))||_1 (AnoGAN), "
               "-(1/K) sum_k [w_k max_m cos(z_k(x), z_k(x_m)) ||z_k(x)|| + v_k l_k(x)] (CSI), "
               "mean_p [e~(p) + v~(p)] (U-std), sum_l [L_val^l + lambda L_dir^l] (MKD)")
    # one line per model (cases), so the formula wraps inside a card instead of running off its edge
    latex = (r"S(x) = \begin{cases} \lVert \phi(x) - c\rVert^2 & \text{Deep SVDD} \\ "
             r"\tfrac{1}{d}\lVert x - D(E(x))\rVert^2 & \text{autoencoder} \\ "
             r"-\tfrac{1}{T}\textstyle\sum_t \log p(t \mid T_t(x)) & \text{GeoTrans} \\ "
             r"\widetilde{\mathrm{REC}}(x) + \widetilde{\mathrm{NLL}}(z) & \text{LSA} \\ "
             r"\tfrac{1}{d}\lVert x - De(En(x))\rVert^2 & \text{OC-GAN} \\ "
             r"\min_z (1-\lambda)\lVert x - G(z)\rVert_1 + \lambda\lVert f(x) - f(G(z))\rVert_1 & \text{AnoGAN} \\ "
             r"-\tfrac{1}{K}\textstyle\sum_k \big[w_k \max_m \cos(z_k(x), z_k(x_m))\,\lVert z_k(x)\rVert"
             r" + v_k\, l_k(x)\big] & \text{CSI} \\ "
             r"\operatorname{mean}_p \big[\tilde e(p) + \tilde v(p)\big] & \text{U-std} \\ "
             r"\textstyle\sum_l \big[\mathcal{L}_{val}^l + \lambda \mathcal{L}_{dir}^l\big] & \text{MKD} \end{cases}")
    intuition = ("A one-class model is trained on normal data alone and defines its own notion of unusual: "
                 "far from the learnt centre, badly reconstructed, hard to recognise transformations of, an "
                 "unlikely latent code (LSA; both terms min-max normalised on the normal training data), or out of "
                 "reach of a generator of normal images (AnoGAN); unlike every training image in a contrastive "
                 "feature space under each rotation (CSI); or where students trained to mimic a frozen teacher "
                 "network err and disagree (U-std, multiresolution KD).")
    reference = (
        Reference("Lukas Ruff, Robert Vandermeulen, Nico Görnitz, Lucas Deecke, Shoaib Ahmed Siddiqui, Alexander "
                  "Binder, Emmanuel Müller, Marius Kloft", "Deep One-Class Classification", "ICML", 2018,
                  "https://proceedings.mlr.press/v80/ruff18a.html"),
        Reference("Izhak Golan, Ran El-Yaniv", "Deep Anomaly Detection Using Geometric Transformations", "NeurIPS",
                  2018, "https://arxiv.org/abs/1805.10917"),
        Reference("Davide Abati, Angelo Porrello, Simone Calderara, Rita Cucchiara", "Latent Space Autoregression "
                  "for Novelty Detection", "CVPR", 2019, "https://arxiv.org/abs/1807.01653"),
        Reference("Pramuditha Perera, Ramesh Nallapati, Bing Xiang", "OCGAN: One-Class Novelty Detection Using GANs "
                  "With Constrained Latent Representations", "CVPR", 2019, "https://arxiv.org/abs/1903.08550"),
        Reference("Thomas Schlegl, Philipp Seeböck, Sebastian M. Waldstein, Ursula Schmidt-Erfurth, Georg Langs",
                  "Unsupervised Anomaly Detection with Generative Adversarial Networks to Guide Marker Discovery",
                  "IPMI", 2017, "https://arxiv.org/abs/1703.05921"),
        Reference("Jihoon Tack, Sangwoo Mo, Jongheon Jeong, Jinwoo Shin", "CSI: Novelty Detection via Contrastive "
                  "Learning on Distributionally Shifted Instances", "NeurIPS", 2020,
                  "https://arxiv.org/abs/2007.08176"),
        Reference("Paul Bergmann, Michael Fauser, David Sattlegger, Carsten Steger", "Uninformed Students: "
                  "Student-Teacher Anomaly Detection with Discriminative Latent Embeddings", "CVPR", 2020,
                  "https://arxiv.org/abs/1911.02357"),
        Reference("Mohammadreza Salehi, Niousha Sadjadi, Soroosh Baselizadeh, Mohammad H. Rohban, Hamid R. Rabiee",
                  "Multiresolution Knowledge Distillation for Anomaly Detection", "CVPR", 2021,
                  "https://arxiv.org/abs/2011.11108"),
    )
    needs = ("model_score",)

    def _score(self, out):
        if "model_score" not in out.extras:
            raise ValueError("this model gives no score of its own (a classifier, or the raw-pixel identity); "
                             "pick a feature-based detector instead")
        return np.asarray(out.extras["model_score"], dtype=np.float64)
