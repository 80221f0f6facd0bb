"""ResNet-18 for small images, in the CIFAR style OpenOOD's benchmarks use: a 3×3 stem, no max-pool."""
from __future__ import annotations

import torch
from torch import nn

from ..spec import CLASSIFIER_SETTINGS
from .cnn import SMALL_CNN_S_PER_IMAGE_EPOCH, FeatureClassifier
from .registry import InputContract, ModelEntry, register_model
from .train import train_classifier


class BasicBlock(nn.Module):
    """conv3×3-BN-ReLU-conv3×3-BN plus the shortcut (a 1×1 conv and BN when the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18Cifar(FeatureClassifier):
    """ResNet-18 (He et al. 2016) for 32×32 inputs: 3×3 stem (64), four stages of two basic blocks (64, 128, 256,
    512 channels; strides 1, 2, 2, 2), global average pooling, one linear head. About 11.2 M parameters.

    The contract of the project's classifiers: `features(x)` = the pooled 512-d penultimate activations (non-negative),
    `head` = the final linear layer (logits = W h + b), `last_conv` = the last block's output activation (Grad-CAM).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(inplace=False))
        blocks, cin = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2 ** i
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.body = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cin, num_classes)
        self.dropout = nn.Identity()  # none in ResNet-18; the contract's forward passes through it
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.feature_dim = cin

    @property
    def last_conv(self) -> nn.Module:
        """The last block's output activation (its ReLU), the Grad-CAM target layer."""
        return self.body[-1].relu

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))

    def features_from_maps(self, maps: torch.Tensor) -> torch.Tensor:
        return self.pool(maps).flatten(1)


register_model(ModelEntry(
    name="resnet18_cifar", title="ResNet-18, CIFAR-style (3×3 stem, no max-pool; 11 M parameters)",
    short="ResNet-18 (CIFAR-style)",
    description="The network of OpenOOD's CIFAR benchmarks: meant for 32 px colour data and a GPU, or a per-class "
                "subsample on a CPU (a training step costs about 23 small-CNN steps).",
    kind="classifier", settings=CLASSIFIER_SETTINGS,
    contract=InputContract(min_side=8),  # strides 1, 2, 2, 2: the last stage sees 1 x 1 at 8 px
    build=lambda c, k, side: ResNet18Cifar(in_channels=c, num_classes=k), train=train_classifier,
    train_seconds=23 * SMALL_CNN_S_PER_IMAGE_EPOCH))
