"""The unseen-people test set (the ``unseen`` stage): faces of people outside the 200 training
identities, framed like the prepared crops.

The test split shares its people with the training split (``prepare`` splits CelebA by photo),
so a model that memorises the training people is flattered by it. This stage builds a second
test set from public CelebA-HQ / FFHQ photographs (their repository, commit, path and SHA-256
in ``reports/unseen/sources.tsv``; the files themselves in ``unseen_sources/``, DVC-tracked in
the model store):

1. **Framing.** Our crops are a fixed box of aligned CelebA 178x218 photos (``data.crop_box``);
   the 1024 px alignments of CelebA-HQ and FFHQ frame a face differently. One eye detector
   (MTCNN, :class:`~faceinpaint.pretrained.eyes.EyeDetector`) measures the mean eye positions
   on the prepared test crops; each original gets the square crop (scale and offset, no
   rotation) that puts its detected eyes on those positions in the least-squares sense
   (:func:`fit_eye_crop`). The crops are re-measured with the same detector at the profile's
   resolution; where the means still differ, the target moves by the difference once. Parts of
   a crop outside the original are filled by mirroring it (``unseen.max_padding`` bounds them).
2. **Identity.** Each face's highest cosine similarity to any training photo under the
   face-recognition net of the ID loss (``backbones.face_recognition``) must lie below that
   net's same-person threshold at its equal-error rate (:func:`equal_error_threshold`), set on
   the test split's photos scored the same way (:func:`open_set_scores`: highest similarity to
   their own identity's training photos, against that to the other identities' photos). The
   single-pair threshold (all pairs of test photos) is reported beside it. Both sides are seen
   at source scale (CelebA photos through ``data.crop_box``, the originals through their eye
   crop, each resized to :data:`IDENTITY_FRAME` px and cut to ``data.identity_box``), not at the
   profile's resolution.
   The eye crops themselves follow the eyes measured at the profile's resolution, so the set a
   profile keeps may differ by a few faces (``cpu``: 170 of 203, ``smoke``: 178).
3. **Arrays.** ``artifacts/unseen/`` mirrors :class:`~faceinpaint.data.PreparedData`'s test
   split: ``test_images.npy`` (N x R x R x 3 uint8), ``test_index.csv``, ``square_masks.npy``
   (the ten squares, image ``i`` with square ``i % 10``), ``irregular_eval.npy`` /
   ``irregular_eval.csv`` and ``info.json``, so ``PreparedData(Path("artifacts/unseen"))`` reads it
   as the test split. ``reports/unseen/framing.json``, ``identity.json`` and ``faces.tsv`` hold
   the measurements.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .config import Config
from .data import PREPARED_DIR, DataError, PreparedData, crop_square, identity_box_fraction, list_images


UNSEEN_DIR = Path("artifacts/unseen")
REPORT_DIR = Path("reports/unseen")
SOURCE_COLUMNS = ("file", "repository", "commit", "path", "sha256", "bytes", "status")
IDENTITY_FRAME = 188
"""Side of the framed square the identity check embeds: ``data.identity_box`` covers 0.1..0.9 x
0.15..0.95 of the CelebA crop, so its cut of a 188 px square is within a pixel of the net's 150 px input."""
FRAMING_TOLERANCE_PX = 0.5
"""Largest allowed difference of mean eye positions (prepared crops vs unseen crops), in pixels
of a 64 px image; scaled with the resolution."""


class UnseenError(DataError):
    """An input of the unseen set is missing or is not the file its provenance names."""


# ------------------------------------------------------------------------------ sources


def read_sources(tsv: Path, folder: Path) -> pd.DataFrame:
    """The provenance table, every file checked: present in ``folder`` with the recorded size and
    SHA-256. :class:`UnseenError` names the first file that is not."""
    tsv, folder = Path(tsv), Path(folder)
    if not tsv.is_file():
        raise UnseenError(f"{tsv}: provenance table of the unseen set not found")
    table = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
    missing = [c for c in SOURCE_COLUMNS if c not in table.columns]
    if missing:
        raise UnseenError(f"{tsv}: columns {missing} missing; expected {list(SOURCE_COLUMNS)}")
    if not folder.is_dir():
        raise UnseenError(f"{folder}: the unseen set's originals are not here (run `dvc pull unseen_sources.dvc`)")
    for row in table.itertuples():
        path = folder / row.file
        if not path.is_file():
            raise UnseenError(f"{path}: listed in {tsv} but missing (run `dvc pull unseen_sources.dvc`)")
        data = path.read_bytes()
        if len(data) != int(row.bytes) or hashlib.sha256(data).hexdigest() != row.sha256:
            raise UnseenError(f"{path}: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}; "
                              f"{tsv} expects {row.bytes} bytes, sha256 {row.sha256}")
    return table


def open_rgb(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as err:
        raise UnseenError(f"{path}: not a readable image ({type(err).__name__}: {err})") from None


# ------------------------------------------------------------------------------ framing


def fit_eye_crop(eyes: np.ndarray, target: np.ndarray, resolution: int) -> tuple[float, float, float]:
    """The square crop ``(x0, y0, side)`` of a source image that maps its ``eyes`` (2 x 2, (left,
    right) x (x, y), source pixels) closest, in the least-squares sense, onto ``target`` (2 x 2,
    pixels of a ``resolution``-px crop): ``target = (eyes - (x0, y0)) * resolution / side``.
    Scale and offset only (three unknowns, four equations)."""
    eyes, target = np.asarray(eyes, np.float64), np.asarray(target, np.float64)
    if eyes.shape != (2, 2) or target.shape != (2, 2) or not np.isfinite(eyes).all():
        raise ValueError(f"fit_eye_crop needs finite 2 x 2 eye positions, got {eyes.tolist()}")
    a = np.zeros((4, 3))
    a[:, 0] = eyes.reshape(-1)
    a[0::2, 1] = 1.0
    a[1::2, 2] = 1.0
    (k, tx, ty), *_ = np.linalg.lstsq(a, target.reshape(-1), rcond=None)
    if k <= 0:
        raise ValueError(f"eyes {eyes.tolist()} cannot be mapped onto {target.tolist()} by a crop")
    return float(-tx / k), float(-ty / k), float(resolution / k)


def padding_fraction(box: tuple[int, int, int], width: int, height: int) -> float:
    """How far the integer crop ``(x0, y0, side)`` reaches outside a ``width x height`` image, as a
    fraction of its side (0: inside)."""
    x0, y0, side = box
    return max(0, -x0, -y0, x0 + side - width, y0 + side - height) / side


def integer_box(box: tuple[float, float, float]) -> tuple[int, int, int]:
    x0, y0, side = box
    return round(x0), round(y0), max(1, round(side))


def crop_framed(image: Image.Image, box: tuple[int, int, int], size: int) -> np.ndarray:
    """Cut the integer square ``(x0, y0, side)`` from ``image`` (parts outside it mirrored from
    the image's edge, numpy's ``symmetric`` padding) and resize it to ``size`` (Lanczos, as
    :func:`faceinpaint.data.load_face`): ``size x size x 3`` uint8."""
    x0, y0, side = box
    w, h = image.size
    pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
    if pad:
        if pad >= min(w, h):
            raise ValueError(f"crop {box} reaches {pad} px outside a {w}x{h} image: too far to mirror")
        image = Image.fromarray(np.pad(np.asarray(image), ((pad, pad), (pad, pad), (0, 0)), mode="symmetric"))
    face = image.crop((x0 + pad, y0 + pad, x0 + pad + side, y0 + pad + side))
    return np.asarray(face.resize((size, size), Image.LANCZOS), np.uint8)


def mean_eyes(eyes: np.ndarray) -> tuple[np.ndarray, int]:
    """Mean (left, right) x (x, y) over the faces where the detector found one, and that count."""
    eyes = np.asarray(eyes, np.float64)
    found = np.isfinite(eyes).all(axis=(1, 2))
    if not found.any():
        raise ValueError("the eye detector found no face in any image")
    return eyes[found].mean(axis=0), int(found.sum())


def framing_offset(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Mean eye positions of ``other`` minus those of ``reference`` (both ``N x 2 x 2`` detector
    outputs): ``2 x 2``, (left, right) x (dx, dy) in pixels."""
    return mean_eyes(other)[0] - mean_eyes(reference)[0]


# ------------------------------------------------------------------------------ identity


def equal_error_threshold(same: np.ndarray, different: np.ndarray) -> tuple[float, float]:
    """Similarity threshold where the false-accept rate (different-person scores >= threshold)
    equals the false-reject rate (same-person scores < threshold), and that rate.

    Among the observed scores the threshold is the one minimising ``|FAR - FRR|`` (the larger
    such score on ties); the rate is the mean of the two there."""
    same, different = np.sort(np.asarray(same, np.float64)), np.sort(np.asarray(different, np.float64))
    if not len(same) or not len(different):
        raise ValueError("equal_error_threshold needs same-person and different-person scores")
    candidates = np.unique(np.concatenate([same, different]))
    frr = np.searchsorted(same, candidates, side="left") / len(same)
    far = 1.0 - np.searchsorted(different, candidates, side="left") / len(different)
    gap = np.abs(far - frr)
    best = np.flatnonzero(gap == gap.min())[-1]
    return float(candidates[best]), float((far[best] + frr[best]) / 2)


def pair_scores(embeddings: np.ndarray, labels) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities of every pair ``i < j`` of unit ``embeddings``, split into same-label
    and different-label pairs."""
    e = np.asarray(embeddings, np.float64)
    labels = np.asarray(labels)
    sims = e @ e.T
    upper = np.triu(np.ones(sims.shape, bool), k=1)
    same = labels[:, None] == labels[None, :]
    return sims[upper & same], sims[upper & ~same]


def open_set_scores(queries: np.ndarray, query_labels, gallery: np.ndarray, gallery_labels) -> tuple[np.ndarray, np.ndarray]:
    """For each unit query embedding (a test photo of a training identity): its highest cosine
    similarity to the gallery photos of its own identity (a member's score) and to those of every
    other identity (the score of a person outside the gallery: the query's identity left out).
    The unseen faces are scored like the second: highest similarity to any gallery photo."""
    sims = np.asarray(queries, np.float64) @ np.asarray(gallery, np.float64).T
    own = np.asarray(query_labels)[:, None] == np.asarray(gallery_labels)[None, :]
    if not own.any(axis=1).all():
        raise ValueError("every query's own identity needs photos in the gallery")
    return np.where(own, sims, -np.inf).max(axis=1), np.where(own, -np.inf, sims).max(axis=1)


def nearest(queries: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each unit query embedding, the highest cosine similarity to a unit gallery embedding
    and that gallery row."""
    sims = np.asarray(queries, np.float64) @ np.asarray(gallery, np.float64).T
    best = sims.argmax(axis=1)
    return sims[np.arange(len(sims)), best], best


@torch.no_grad()
def embed_framed(embedder, frames: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Unit identity embeddings of ``N x S x S x 3`` uint8 framed squares (float64)."""
    from .data import to_tensor_image

    out = [embedder(to_tensor_image(frames[i:i + batch_size])).double().numpy()
           for i in range(0, len(frames), batch_size)]
    return np.concatenate(out)


def celeba_frames(cfg: Config, split: str) -> tuple[np.ndarray, list[str], list[str]]:
    """The split's photos through ``data.crop_box``, resized to :data:`IDENTITY_FRAME`; their
    files and identity labels (the parent folder, as :func:`faceinpaint.data.prepare` labels)."""
    files = list_images(Path(cfg.data.source) / split)
    frames = []
    for path in files:
        face = crop_square(open_rgb(path), cfg.data.crop_box, path)
        frames.append(np.asarray(face.resize((IDENTITY_FRAME, IDENTITY_FRAME), Image.LANCZOS), np.uint8))
    return np.stack(frames), [str(p) for p in files], [p.parent.name for p in files]


def distribution(values: np.ndarray) -> dict:
    v = np.asarray(values, np.float64)
    return {"n": int(len(v)), "min": round(float(v.min()), 4), "mean": round(float(v.mean()), 4),
            **{f"p{q}": round(float(np.percentile(v, q)), 4) for q in (5, 25, 50, 75, 95)},
            "max": round(float(v.max()), 4)}


# ------------------------------------------------------------------------------ the stage


def build_unseen(cfg: Config, out: Path = UNSEEN_DIR, reports: Path = REPORT_DIR,
                 prepared: PreparedData | None = None, device="cpu") -> dict:
    """The ``unseen`` stage (module docstring): frame, check identities, write the arrays and
    the measurements. Returns the summary written to ``reports/unseen/framing.json`` and
    ``identity.json``."""
    from .pretrained import IdentityEmbedder, load_face_recognition
    from .pretrained.eyes import EyeDetector

    params = cfg.unseen
    prepared = prepared or PreparedData(PREPARED_DIR)
    res = cfg.resolution
    tolerance = FRAMING_TOLERANCE_PX * res / 64
    sources = read_sources(Path(params.sources), Path(params.originals))
    originals = [open_rgb(Path(params.originals) / f) for f in sources["file"]]
    detector = EyeDetector()

    # 1. framing: target eyes on the prepared test crops, one crop per original
    reference_eyes = detector.eyes(np.asarray(prepared.images("test")))
    target, reference_found = mean_eyes(reference_eyes)
    source_eyes = np.stack([detector.eyes_of(im) for im in originals])
    framed = np.isfinite(source_eyes).all(axis=(1, 2))
    rounds, aim = [], target.copy()
    for _ in range(2):
        boxes = [integer_box(fit_eye_crop(e, aim, res)) if ok else None for e, ok in zip(source_eyes, framed)]
        pads = np.array([padding_fraction(b, *im.size) if b else np.inf for b, im in zip(boxes, originals)])
        usable = framed & (pads <= params.max_padding)
        crops = np.stack([crop_framed(im, b, res) if ok else np.zeros((res, res, 3), np.uint8)
                          for im, b, ok in zip(originals, boxes, usable)])
        crop_eyes = np.full((len(crops), 2, 2), np.nan)
        crop_eyes[usable] = detector.eyes(crops[usable])
        offset = mean_eyes(crop_eyes[usable])[0] - target
        rounds.append({"aim_px": aim.round(3).tolist(), "offset_px": offset.round(3).tolist()})
        if np.abs(offset).max() <= tolerance / 2:
            break
        aim = aim - offset  # the detector sees the crops' eyes off by `offset`: aim that much the other way

    # 2. identity: every framed face against every training photo, at source scale
    embedder = IdentityEmbedder(load_face_recognition(cfg.backbones.face_recognition), identity_box_fraction(cfg)).to(device)
    train_frames, train_files, train_labels = celeba_frames(cfg, "train")
    test_frames, _, test_labels = celeba_frames(cfg, "test")
    train_emb, test_emb = embed_framed(embedder, train_frames), embed_framed(embedder, test_frames)
    member, outsider = open_set_scores(test_emb, test_labels, train_emb, train_labels)
    threshold, eer = equal_error_threshold(member, outsider)
    same, different = pair_scores(test_emb, test_labels)  # one photo against one photo: reported, not used
    pair_threshold, pair_eer = equal_error_threshold(same, different)
    unseen_frames = np.stack([crop_framed(im, b, IDENTITY_FRAME) if ok else np.zeros((IDENTITY_FRAME,) * 2 + (3,), np.uint8)
                              for im, b, ok in zip(originals, boxes, usable)])
    best_sim, best_row = nearest(embed_framed(embedder, unseen_frames[usable]), train_emb)
    max_sim = np.full(len(originals), np.nan)
    max_sim[usable] = best_sim
    nearest_file = np.full(len(originals), "", dtype=object)
    nearest_file[usable] = [train_files[r] for r in best_row]
    passed = usable & (max_sim < threshold)
    keep = np.flatnonzero(passed)[: params.max_faces]

    # 3. the set, and the framing measured on exactly the faces kept
    final_eyes = crop_eyes[keep]
    final_offset = mean_eyes(final_eyes)[0] - target
    if np.abs(final_offset).max() > tolerance:
        raise UnseenError(f"the unseen crops' mean eye positions differ from the prepared crops' by "
                          f"{final_offset.round(3).tolist()} px, more than {tolerance:.2f} px")
    out.mkdir(parents=True, exist_ok=True)
    reports.mkdir(parents=True, exist_ok=True)
    np.save(out / "test_images.npy", crops[keep])
    index = sources.iloc[keep][["file", "repository", "commit", "path", "sha256"]].reset_index(drop=True)
    index.insert(0, "row", np.arange(len(keep)))
    index["identity"] = [f"unseen_{i}" for i in range(len(keep))]
    index.to_csv(out / "test_index.csv", index=False)
    np.save(out / "square_masks.npy", np.asarray(prepared.square_masks()))
    irregular, irregular_rows = prepared.irregular_eval()
    np.save(out / "irregular_eval.npy", np.asarray(irregular))
    irregular_rows.to_csv(out / "irregular_eval.csv", index=False)
    faces = sources[["file", "repository", "path"]].copy()
    faces["eyes_found"] = framed
    faces["crop_x0_y0_side"] = [" ".join(map(str, b)) if b else "" for b in boxes]
    faces["padding_fraction"] = np.where(np.isfinite(pads), pads, np.nan).round(4)
    faces["max_similarity"] = max_sim.round(4)
    faces["nearest_training_photo"] = nearest_file
    faces["kept"] = np.isin(np.arange(len(sources)), keep)
    faces.to_csv(reports / "faces.tsv", sep="\t", index=False)

    framing = {
        "detector": "MTCNN (facenet-pytorch 2.6.0 P/R/O-Net), eyes of the most confident face, images resized to "
                    f"{detector.detection_size} px",
        "resolution": res,
        "reference": {"images": "prepared test split", "count": len(reference_eyes), "faces_found": reference_found,
                      "mean_eyes_px": target.round(3).tolist()},
        "originals": len(originals), "eyes_found": int(framed.sum()),
        "max_padding": params.max_padding, "within_padding": int(usable.sum()),
        "padding_fraction": distribution(pads[usable]),
        "rounds": rounds,
        "kept": {"count": int(len(keep)), "faces_found": mean_eyes(final_eyes)[1],
                 "mean_eyes_px": mean_eyes(final_eyes)[0].round(3).tolist(),
                 "offset_px": final_offset.round(3).tolist(), "tolerance_px": tolerance},
    }
    identity = {
        "network": "faceapi-recognition (dlib ResNet-29 metric net), the ID loss's",
        "frame": f"source scale: CelebA photos through data.crop_box, originals through their eye crop, "
                 f"{IDENTITY_FRAME} px, cut to data.identity_box",
        "training_photos": len(train_emb), "training_identities": len(set(train_labels)),
        "threshold": {"rule": "equal-error rate of the test split's photos scored as the unseen faces are (highest "
                              "cosine similarity to a training photo): own identity's photos (same person) against "
                              "the other 199 identities' photos (a person outside the training identities)",
                      "value": round(threshold, 4), "equal_error_rate": round(eer, 4),
                      "same_person": distribution(member), "other_people": distribution(outsider)},
        "single_pair_threshold": {
            "rule": "equal-error rate on all pairs of the test split's photos (one photo against one photo); not "
                    "used: a face's highest similarity over 4,800 training photos is a maximum of thousands of "
                    "different-person scores, which the single-pair threshold does not calibrate",
            "value": round(pair_threshold, 4), "equal_error_rate": round(pair_eer, 4),
            "same_pairs": int(len(same)), "different_pairs": int(len(different)),
            "same": distribution(same), "different": distribution(different),
            "would_pass": int((usable & (max_sim < pair_threshold)).sum())},
        "checked": int(usable.sum()), "passed": int(passed.sum()), "kept": int(len(keep)),
        "max_similarity": {"checked": distribution(max_sim[usable]), "kept": distribution(max_sim[keep])},
    }
    info = {"resolution": res, "count": int(len(keep)), "source": str(params.originals),
            "square_rule": "test image i uses square i % 10", "framing": framing["kept"],
            "identity_threshold": identity["threshold"]["value"]}
    (out / "info.json").write_text(json.dumps(info, indent=2) + "\n")
    (reports / "framing.json").write_text(json.dumps(framing, indent=2) + "\n")
    (reports / "identity.json").write_text(json.dumps(identity, indent=2) + "\n")
    return {"framing": framing, "identity": identity}


def clear(folder: Path) -> None:
    """Remove a previous run's outputs (DVC may have linked them to its cache)."""
    if folder.exists():
        shutil.rmtree(folder)
