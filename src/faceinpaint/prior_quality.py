"""How close the StyleGAN2 prior's samples are to real test faces: Frechet distances on two
backbones, for the stage's final check and for the learning-curve points during training.

* ``fd_<fid backbone>``: the evaluation's FD features (EfficientNet-Lite0 pool offline, Inception
  pool3 when its weights are present).
* ``fd_faceapi-resnet29``: FD of the face-recognition network's 128-d unit embeddings, on the
  face crop of the ID metric (``data.identity_box``). Face-specific, and independent of the
  ImageNet backbone. Ours and Variant 2 train with an ID loss on this same network, so for
  those models it is not an independent judge.

Samples are drawn from ``G_ema`` with fixed noise and a fixed seed, so two checks of the same
weights give the same numbers.
"""

from __future__ import annotations

import numpy as np
import torch

from .config import Config
from .data import PREPARED_DIR, PreparedData, identity_box_fraction, to_tensor_image
from .metrics import FACE_FD_BACKBONE, frechet_distance, metric_key

BATCH = 64


class PriorQuality:
    """``check(g_ema) -> ({fd keys: value, "fd_samples": n}, first 32 samples)``.

    Real-image features of the first ``n`` test images are computed once per instance.
    """

    def __init__(self, cfg: Config, n: int | None = None, device="cpu", seed: int | None = None):
        from .pretrained import IdentityEmbedder, fid_feature_extractor, load_face_recognition

        self.cfg, self.device = cfg, torch.device(device)
        self.seed = cfg.seed if seed is None else seed
        test = PreparedData(PREPARED_DIR).images("test")
        self.n = min(len(test), n or len(test))
        self.fid = fid_feature_extractor(cfg.backbones.fid).to(self.device).eval()
        self.face = IdentityEmbedder(load_face_recognition(cfg.backbones.face_recognition),
                                     identity_box_fraction(cfg)).to(self.device).eval()
        self.keys = (metric_key("fd", self.fid.name), metric_key("fd", FACE_FD_BACKBONE))
        self.real = self._features(to_tensor_image(test[start:start + BATCH]) for start in range(0, self.n, BATCH))

    @torch.no_grad()
    def _features(self, batches) -> tuple[np.ndarray, np.ndarray]:
        fid, face = [], []
        for x in batches:
            x = x.to(self.device)
            fid.append(self.fid(x).double().cpu().numpy())
            face.append(self.face(x).double().cpu().numpy())
        return np.concatenate(fid), np.concatenate(face)

    @torch.no_grad()
    def check(self, g_ema: torch.nn.Module) -> tuple[dict, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed)
        was_training = g_ema.training
        g_ema.eval()
        samples: list[torch.Tensor] = []

        def fakes():
            for start in range(0, self.n, BATCH):
                z = torch.randn(min(BATCH, self.n - start), g_ema.style_dim, generator=gen).to(self.device)
                fake = g_ema([z], randomize_noise=False)[0].clamp(-1, 1)
                if not samples:
                    samples.append(fake[:32].cpu())
                yield fake

        fake_fid, fake_face = self._features(fakes())
        g_ema.train(was_training)
        values = {self.keys[0]: round(frechet_distance(self.real[0], fake_fid), 4),
                  self.keys[1]: round(frechet_distance(self.real[1], fake_face), 6),
                  "fd_samples": self.n}
        return values, samples[0]
