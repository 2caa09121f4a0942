"""Pretrained, frozen networks: identity embedding, ImageNet backbones, LPIPS, FID features.

Every weight file is checked against the hash registry (:mod:`.weights`) before it is loaded;
nothing downloads at run time. See PAPER.md sec. 8 for why these networks stand in for the
paper's (ArcFace IR-SE50 -> face-api faceRecognitionNet; VGG16 / AlexNet / Inception whenever
their weights are present, else EfficientNet-Lite0).
"""

from .efficientnet_lite import EfficientNetLite0, load_efficientnet_lite0
from .face_recognition import (
    FaceRecognitionNet,
    IdentityEmbedder,
    identity_auc,
    load_face_recognition,
    read_tfjs_weights,
    roc_auc,
    state_dict_from_faceapi,
)
from .feature_nets import fid_feature_extractor, lpips_metric, perceptual_backbone
from .weights import WEIGHT_FILES, WeightFile, WeightsError, verify_file

__all__ = [
    "WEIGHT_FILES",
    "EfficientNetLite0",
    "FaceRecognitionNet",
    "IdentityEmbedder",
    "WeightFile",
    "WeightsError",
    "fid_feature_extractor",
    "identity_auc",
    "load_efficientnet_lite0",
    "load_face_recognition",
    "lpips_metric",
    "perceptual_backbone",
    "read_tfjs_weights",
    "roc_auc",
    "state_dict_from_faceapi",
    "verify_file",
]
