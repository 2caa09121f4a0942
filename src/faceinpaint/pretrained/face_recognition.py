"""Identity embedding R of the structure loss: face-api.js faceRecognitionNet in PyTorch.

PAPER.md sec. 2 (paper sec. 3) defines L_ID = 1 - cos(R(I_gt), R(I_r)) with R an ArcFace-style
network; this suite uses dlib's ResNet-29 metric network as ported to TensorFlow.js by
face-api.js (PAPER.md sec. 8). The weights ship as a TF.js manifest plus a binary of
uint8-quantised tensors.

Architecture (face-api.js ``FaceRecognitionNet.forwardInput``), all convolutions followed by a
per-channel affine "scale layer" (dlib's affine layer, the folded batch norm):

    conv 7x7 / 2 'valid' -> ReLU -> max-pool 3x3 / 2 'valid'
    3 x residual(32); residual_down(64) + 3 x residual(64); residual_down(128) + 2 x residual(128);
    residual_down(256) + 2 x residual(256); residual_down(256)
    global average pool -> 256 x 128 matrix (no bias)

A residual block is conv3x3 'same' + ReLU, conv3x3 'same', add the input, ReLU. A down block
starts with a 3x3 / 2 'valid' convolution; its shortcut is a 2x2 / 2 average pool whose
channels are zero-padded to the output width, and where the pooled map is one pixel larger
than the convolved one the convolved map gets a zero row and column at the bottom and right.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .common import FrozenNetwork, freeze
from .weights import verified_path

FACE_INPUT_SIZE = 150
# face-api.js normalisation: RGB in 0..255 minus this mean, divided by 256.
FACE_MEAN_RGB = (122.782, 117.001, 104.298)
FACE_INPUT_SCALE = 256.0


class ScaleLayer(nn.Module):
    """Per-channel affine map y = x * weight + bias (dlib's affine layer)."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight[:, None, None] + self.bias[:, None, None]


class ConvScale(nn.Module):
    """Convolution with bias, then a scale layer. Stride 1 uses TF 'same' padding (symmetric for
    odd kernels); stride 2 uses 'valid', as face-api does."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        padding = kernel_size // 2 if stride == 1 else 0
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding)
        self.scale = ScaleLayer(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale(self.conv(x))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = ConvScale(channels, channels, 3, 1)
        self.conv2 = ConvScale(channels, channels, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        return F.relu(out + x)


class ResidualDownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = ConvScale(in_channels, out_channels, 3, 2)
        self.conv2 = ConvScale(out_channels, out_channels, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        shortcut = F.avg_pool2d(x, 2, 2)
        extra_h = shortcut.shape[2] - out.shape[2]
        extra_w = shortcut.shape[3] - out.shape[3]
        if extra_h or extra_w:
            # 'valid' 3x3/2 can give one pixel less than the 2x2/2 pool; face-api pads with zeros.
            out = F.pad(out, (0, extra_w, 0, extra_h))
        extra_channels = out.shape[1] - shortcut.shape[1]
        if extra_channels:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, extra_channels))
        return F.relu(out + shortcut)


class FaceRecognitionNet(nn.Module):
    """dlib's ResNet-29 face metric network (face-api.js port).

    forward: ``N x 3 x 150 x 150`` preprocessed input (RGB 0..255 minus :data:`FACE_MEAN_RGB`,
    divided by 256) -> ``N x 128`` unnormalised descriptor. Module names follow face-api's
    weight names (``conv64_down/conv1/...`` -> ``conv64_down.conv1....``).
    """

    def __init__(self):
        super().__init__()
        self.conv32_down = ConvScale(3, 32, 7, 2)
        self.conv32_1 = ResidualBlock(32)
        self.conv32_2 = ResidualBlock(32)
        self.conv32_3 = ResidualBlock(32)
        self.conv64_down = ResidualDownBlock(32, 64)
        self.conv64_1 = ResidualBlock(64)
        self.conv64_2 = ResidualBlock(64)
        self.conv64_3 = ResidualBlock(64)
        self.conv128_down = ResidualDownBlock(64, 128)
        self.conv128_1 = ResidualBlock(128)
        self.conv128_2 = ResidualBlock(128)
        self.conv256_down = ResidualDownBlock(128, 256)
        self.conv256_1 = ResidualBlock(256)
        self.conv256_2 = ResidualBlock(256)
        self.conv256_down_out = ResidualDownBlock(256, 256)
        self.fc = nn.Linear(256, 128, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv32_down(x)), 3, 2)
        for block in (
            self.conv32_1, self.conv32_2, self.conv32_3,
            self.conv64_down, self.conv64_1, self.conv64_2, self.conv64_3,
            self.conv128_down, self.conv128_1, self.conv128_2,
            self.conv256_down, self.conv256_1, self.conv256_2, self.conv256_down_out,
        ):  # fmt: skip
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)))


# ------------------------------------------------------------------------------ TF.js weights

_QUANTISED_DTYPES = {"uint8": np.uint8, "uint16": np.uint16}


def read_tfjs_weights(manifest_path, weights_dir=None) -> dict[str, np.ndarray]:
    """Decode a TensorFlow.js weights manifest into float32 arrays in the manifest's layout.

    Each manifest group lists binary shard files whose concatenation holds its tensors back to
    back in manifest order. Quantised tensors are stored as integers q with value q*scale + min.
    The caller verifies the files' hashes first.
    """
    manifest_path = Path(manifest_path)
    weights_dir = Path(weights_dir) if weights_dir is not None else manifest_path.parent
    tensors: dict[str, np.ndarray] = {}
    for group in json.loads(manifest_path.read_text()):
        buffer = b"".join((weights_dir / shard).read_bytes() for shard in group["paths"])
        offset = 0
        for spec in group["weights"]:
            if spec["dtype"] != "float32":
                raise ValueError(f"{spec['name']}: unsupported dtype {spec['dtype']}")
            count = int(np.prod(spec["shape"], dtype=np.int64))
            quant = spec.get("quantization")
            if quant is None:
                values = np.frombuffer(buffer, "<f4", count, offset)
                offset += 4 * count
            else:
                stored = np.dtype(_QUANTISED_DTYPES[quant["dtype"]]).newbyteorder("<")
                q = np.frombuffer(buffer, stored, count, offset)
                offset += stored.itemsize * count
                values = q.astype(np.float64) * quant["scale"] + quant["min"]
            tensors[spec["name"]] = values.astype(np.float32).reshape(spec["shape"])
        if offset != len(buffer):
            raise ValueError(f"{manifest_path}: tensors use {offset} bytes of {len(buffer)}")
    return tensors


def state_dict_from_faceapi(tensors: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map face-api tensor names and TF layouts onto :class:`FaceRecognitionNet`'s state dict.

    Conv filters are HWIO in TF and OIHW in PyTorch; the fc matrix is (in, out) for ``x @ W``.
    """
    state = {}
    for name, value in tensors.items():
        parts = name.split("/")
        t = torch.from_numpy(value.copy())
        if name == "fc":
            state["fc.weight"] = t.t().contiguous()
        elif parts[-2:] == ["conv", "filters"]:
            state[".".join(parts[:-2] + ["conv", "weight"])] = t.permute(3, 2, 0, 1).contiguous()
        elif parts[-2:] == ["conv", "bias"]:
            state[".".join(parts[:-2] + ["conv", "bias"])] = t
        elif parts[-2:] == ["scale", "weights"]:
            state[".".join(parts[:-2] + ["scale", "weight"])] = t
        elif parts[-2:] == ["scale", "biases"]:
            state[".".join(parts[:-2] + ["scale", "bias"])] = t
        else:
            raise KeyError(f"unexpected face-api tensor {name}")
    return state


def load_face_recognition(weights_dir: str | Path = "data/weights/faceapi-recognition") -> FaceRecognitionNet:
    """face-api faceRecognitionNet with its weights checked and loaded strictly; frozen, eval."""
    manifest = verified_path("faceapi_recognition_manifest", weights_dir)
    verified_path("faceapi_recognition_weights", weights_dir)
    net = FaceRecognitionNet()
    net.load_state_dict(state_dict_from_faceapi(read_tfjs_weights(manifest)), strict=True)
    return freeze(net)


# ------------------------------------------------------------------------------ embedder


def crop_pixels(height: int, width: int, crop_box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """Fractional box (x0, y0, x1, y1) -> integer pixel box (x0, y0, x1, y1) of an H x W image."""
    x0, y0, x1, y1 = crop_box
    px = (round(x0 * width), round(y0 * height), round(x1 * width), round(y1 * height))
    if not (0 <= px[0] < px[2] <= width and 0 <= px[1] < px[3] <= height):
        raise ValueError(f"crop box {crop_box} is empty or outside a {height}x{width} image")
    return px


class IdentityEmbedder(FrozenNetwork):
    """R of L_ID, PAPER.md sec. 2 (paper sec. 3): crop the face, resize to 150x150, embed, L2-normalise.

    ``crop_box`` is (x0, y0, x1, y1) as fractions of the input image, e.g. the box
    (33, 80, 145, 192) of a 178x218 aligned CelebA photo is (33/178, 80/218, 145/178, 192/218).
    forward: images in [-1, 1], ``N x 3 x H x W`` of any size -> ``N x 128`` unit vectors,
    differentiable with respect to the images.
    """

    def __init__(self, net: FaceRecognitionNet, crop_box: tuple[float, float, float, float]):
        super().__init__()
        self.net = freeze(net)
        self.crop_box = tuple(float(v) for v in crop_box)
        self.register_buffer("mean_rgb", torch.tensor(FACE_MEAN_RGB).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        x0, y0, x1, y1 = crop_pixels(images.shape[2], images.shape[3], self.crop_box)
        face = images[:, :, y0:y1, x0:x1]
        if face.shape[2:] != (FACE_INPUT_SIZE, FACE_INPUT_SIZE):
            face = F.interpolate(
                face, size=(FACE_INPUT_SIZE, FACE_INPUT_SIZE), mode="bilinear", align_corners=False, antialias=True
            )
        rgb255 = (face + 1.0) * 127.5
        return (rgb255 - self.mean_rgb) / FACE_INPUT_SCALE

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(self.preprocess(images)), dim=1)


# ------------------------------------------------------------------------------ evaluation


def sample_identity_pairs(labels, n_pairs: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j), i < j, each drawn without repetition: up to ``n_pairs`` with the same
    label and exactly ``n_pairs`` with different labels. Returns two ``K x 2`` arrays."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    same = np.array(
        [(i, j) for group in _groups(labels) for a, i in enumerate(group) for j in group[a + 1 :]], dtype=np.int64
    ).reshape(-1, 2)
    if len(same) == 0:
        raise ValueError("no two images share a label")
    n = len(labels)
    n_different_total = n * (n - 1) // 2 - len(same)
    same = same[rng.choice(len(same), size=min(n_pairs, len(same)), replace=False)]
    if n_different_total < n_pairs:
        raise ValueError(f"only {n_different_total} different-label pairs exist, {n_pairs} asked")
    different: set[tuple[int, int]] = set()
    while len(different) < n_pairs:
        i, j = rng.integers(0, n, size=2)
        if labels[i] != labels[j]:
            different.add((min(i, j), max(i, j)))
    return same, np.array(sorted(different), dtype=np.int64)


def _groups(labels: np.ndarray) -> list[list[int]]:
    groups: dict = {}
    for index, label in enumerate(labels.tolist()):
        groups.setdefault(label, []).append(index)
    return list(groups.values())


def roc_auc(positive_scores, negative_scores) -> float:
    """Area under the ROC curve = P(positive score > negative score), ties counted one half
    (Mann-Whitney U divided by the number of positive-negative pairs)."""
    pos = np.asarray(positive_scores, dtype=np.float64)
    neg = np.asarray(negative_scores, dtype=np.float64)
    order = np.sort(neg)
    below = np.searchsorted(order, pos, side="left")
    below_or_equal = np.searchsorted(order, pos, side="right")
    return float((below + 0.5 * (below_or_equal - below)).sum() / (len(pos) * len(neg)))


def identity_auc(embeddings, labels, n_pairs: int = 1000, seed: int = 0) -> float:
    """Same- vs different-identity ROC AUC of the cosine similarity of embeddings.

    Draws up to ``n_pairs`` same-identity and ``n_pairs`` different-identity pairs
    (:func:`sample_identity_pairs`, fixed ``seed``). 1.0 means every same-identity pair is more
    similar than every different-identity pair; 0.5 is chance.
    """
    e = F.normalize(torch.as_tensor(embeddings).detach().cpu().double(), dim=1).numpy()
    same, different = sample_identity_pairs(labels, n_pairs, seed)

    def cosine(pairs: np.ndarray) -> np.ndarray:
        return (e[pairs[:, 0]] * e[pairs[:, 1]]).sum(axis=1)

    return roc_auc(cosine(same), cosine(different))
