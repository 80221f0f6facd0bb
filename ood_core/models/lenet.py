"""LeNet-5 for 28×28 images (LeCun et al. 1998), in today's form: ReLU and max-pooling, a dropout before the head.

conv5×5(6, padding 2) - ReLU - pool - conv5×5(16) - ReLU - pool - fc(120, ReLU) - fc(84, ReLU) - dropout - fc(K).
The 28 px input is padded to LeNet's 32 by the first convolution, so the flattened maps are 16 × 5 × 5 = 400 as in
the paper: it takes 28 × 28 images only (any channel count). 61,706 parameters at 10 classes (one grey channel) and
0.42 M multiply-accumulates per image, about 2% of the small CNN's at 28 px: the classic MNIST-size network.
"""
from __future__ import annotations

import torch
from torch import nn

from ..spec import CLASSIFIER_SETTINGS
from .cnn import SMALL_CNN_S_PER_IMAGE_EPOCH, FeatureClassifier
from .registry import InputContract, ModelEntry, register_model
from .reproducible import SeededDropout
from .train import train_classifier

SIDE = 28


class LeNet5(FeatureClassifier):
    """LeNet-5 with the classifier contract (cnn.FeatureClassifier).

    `features(x)` = the 84 non-negative activations of the second fully connected layer (what ReAct, KNN and
    Mahalanobis use), `head` = the last linear layer (logits = W h + b), `last_conv` = the second convolution's
    ReLU (Grad-CAM's layer, 10 × 10 maps), `feature_maps(x)` = its output and `features_from_maps(maps)` the rest.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, dropout: float = 0.3):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # 28 -> 28 -> 14
            nn.Conv2d(6, 16, 5), nn.ReLU(),  # 14 -> 10
        )
        self.pool = nn.MaxPool2d(2)  # 10 -> 5
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.dropout = SeededDropout(dropout)  # masks from the training call's generator (MC dropout too)
        self.head = nn.Linear(84, num_classes)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.feature_dim = 84

    @property
    def last_conv(self) -> nn.Module:
        """The second convolution's output activation (ReLU), the Grad-CAM target layer."""
        return self.body[-1]

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def features_from_maps(self, maps: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc2(torch.relu(self.fc1(self.pool(maps).flatten(1)))))


register_model(ModelEntry(
    name="lenet5", title="LeNet-5 (28×28 only, 62 k parameters)", short="LeNet-5",
    description="The classic MNIST network (two 5×5 convolutions, three linear layers): for 28 px data such as "
                "MNIST, Fashion-MNIST and KMNIST.",
    kind="classifier", settings=CLASSIFIER_SETTINGS, contract=InputContract(min_side=SIDE, max_side=SIDE),
    build=lambda c, k, side: LeNet5(in_channels=c, num_classes=k), train=train_classifier,
    # scripts/bench_models.py: 15 epochs on the MNIST sample at 28 px took 10.9 s against the small CNN's 104.5 s on
    # the same machine, so a tenth of the small CNN's rate
    train_seconds=SMALL_CNN_S_PER_IMAGE_EPOCH / 10, default_side=SIDE))
