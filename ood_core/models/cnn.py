"""A small CNN whose penultimate features and last convolutional layer are exposed (registered as "small_cnn")."""
from __future__ import annotations

import torch
from torch import nn

from ..spec import CLASSIFIER_SETTINGS
from .registry import InputContract, ModelEntry, register_model
from .reproducible import SeededDropout
from .train import train_classifier


class FeatureClassifier(nn.Module):
    """The contract every classifier of the registry keeps: logits = head(dropout(features(x))), with
    features(x) = features_from_maps(feature_maps(x)). A subclass defines `feature_maps` (the maps Grad-CAM reads),
    `features_from_maps` (pooling and the layers up to the penultimate activations h), a `head` (nn.Linear), a
    `dropout` module (nn.Identity where the network has none) and the `last_conv` property."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_from_maps(self.feature_maps(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))


class SmallCNN(FeatureClassifier):
    """conv(32)-conv(32)-pool-conv(64)-conv(64)-GAP-fc(128, ReLU)-dropout-fc(K).

    `features(x)` returns the non-negative penultimate activations h (what ReAct, KNN,
    Mahalanobis use); `head` maps them to logits: logits = W h + b.
    `last_conv` is the layer Grad-CAM explains.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32,
                 feature_dim: int = 128, dropout: float = 0.3):
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *block(in_channels, width), *block(width, width), nn.MaxPool2d(2),
            *block(width, 2 * width), *block(2 * width, 2 * width),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(2 * width, feature_dim)
        self.dropout = SeededDropout(dropout)  # masks from the training call's generator
        self.head = nn.Linear(feature_dim, num_classes)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.feature_dim = feature_dim

    @property
    def last_conv(self) -> nn.Module:
        """The last convolution block's output activation (ReLU), the Grad-CAM target layer."""
        return self.body[-1]

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def features_from_maps(self, maps: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc1(self.pool(maps).flatten(1)))


# seconds per training image and epoch at 16 px, one training thread; its time grows with the image area alone
# (size_overhead 0): scripts/bench_size_cost.py (docs/bench/size_cost.json: 2 epochs over the MNIST sample's 3,000
# training images took 2.07 s at 16 px, 6.14 s at 28 and 13.3 s at 40, against areas 1 : 3.06 : 6.25)
SMALL_CNN_S_PER_IMAGE_EPOCH = 3.5e-4

register_model(ModelEntry(
    name="small_cnn", title="Small CNN (4 convolutions, 128-d features)", short="small CNN",
    description="Trains in seconds on a CPU at any image size: the default classifier of every lesson.",
    kind="classifier", settings=CLASSIFIER_SETTINGS, contract=InputContract(min_side=8),
    build=lambda c, k, side: SmallCNN(in_channels=c, num_classes=k), train=train_classifier,
    train_seconds=SMALL_CNN_S_PER_IMAGE_EPOCH))
