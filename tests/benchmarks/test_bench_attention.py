"""Speed of the multi-level attention (ACM + ATN, PAPER.md sec. 3): our batched formulation
against PEN-Net's per-sample one.

The reference is written here the way PEN-Net's ``AtnConv`` (Zeng et al. 2019) computes
attention, with the scores of this suite (cosine of 1x1 patches, softmax over known patches,
paste on hole cells only): a Python loop over the batch; in each sample, every patch of the
score level is a 1x1 convolution kernel slid over the (normalised) map, the softmax runs
over the channel axis of patches, and a transposed convolution whose kernels are the
non-overlapping blocks of the target level pastes the weighted blocks back. Ours does all
samples at once with one batched matmul per level. Both must give the same maps and gradients.

Run (no conftest needed):
    python -m pytest tests/benchmarks/test_bench_attention.py -m benchmark --benchmark-enable
It prints the speed ratio and writes ``reports/benchmarks/attention.json``. The small
equivalence test in this file runs in the default test run.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

from faceinpaint.config import load_config
from faceinpaint.masks import square_masks
from faceinpaint.texture import NORM_EPS, MultiLevelAttention, level_sizes, level_widths

REPORT = Path(__file__).resolve().parents[2] / "reports" / "benchmarks" / "attention.json"
BATCH = 8
LEVELS = (4, 5, 6)
SOFTMAX_SCALE = 10.0
PROFILES = ("cpu", "paper")


def profile_geometry(profile: str) -> tuple[int, int, int]:
    """(resolution, texture base_width, texture max_width) of a params.yaml profile."""
    cfg = load_config(profile=profile)
    return cfg.resolution, cfg.texture.base_width, cfg.texture.max_width


def pennet_attention(maps: Sequence[Tensor], mask: Tensor, score_level: dict[int, int],
                     softmax_scale: float) -> list[Tensor]:
    """Per-sample, convolution-based attention (PEN-Net's formulation); returns the filled
    maps of levels 1, 2, 3."""
    filled: dict[int, list[Tensor]] = {1: [], 2: [], 3: []}
    resolution = mask.shape[-1]
    for n in range(mask.shape[0]):
        sample_mask = mask[n:n + 1]
        for target_level, outputs in filled.items():
            source = maps[score_level[target_level] - 1][n:n + 1]
            target = maps[target_level - 1][n:n + 1]
            h, w = source.shape[-2:]
            height, width = target.shape[-2:]
            source_hole = F.max_pool2d(sample_mask, resolution // h) > 0.5
            known = ~source_hole.flatten()
            if known.all() or not known.any():  # nothing to fill, or nothing to fill from
                outputs.append(target)
                continue
            patches = F.normalize(source[0].flatten(1).t(), dim=1, eps=NORM_EPS)
            kernels = patches[:, :, None, None]  # P x C x 1 x 1: every patch is a filter
            similarity = F.conv2d(F.normalize(source, dim=1, eps=NORM_EPS), kernels)  # 1 x P x h x w
            logits = (softmax_scale * similarity).masked_fill(~known[None, :, None, None], float("-inf"))
            scores = torch.softmax(logits, dim=1) * source_hole
            rh, rw = height // h, width // w
            blocks = F.unfold(target, (rh, rw), stride=(rh, rw))[0].t()
            blocks = blocks.reshape(h * w, target.shape[1], rh, rw)  # P x C x rh x rw
            pasted = F.conv_transpose2d(scores, blocks, stride=(rh, rw))
            target_hole = F.max_pool2d(sample_mask, resolution // height) > 0.5
            outputs.append(torch.where(target_hole, pasted, target))
    return [torch.cat(outputs) for outputs in filled.values()]


def make_inputs(resolution: int, base_width: int, max_width: int, batch: int,
                seed: int = 0) -> tuple[list[Tensor], Tensor]:
    """Encoder-like maps (ELU-range values) at the generator's level sizes and widths, and
    the paper's square masks (sides 1/8 .. 1/4 of the image)."""
    gen = torch.Generator().manual_seed(seed)
    maps = [torch.randn(batch, c, s, s, generator=gen).requires_grad_(True)
            for s, c in zip(level_sizes(resolution), level_widths(base_width, max_width))]
    squares = torch.from_numpy(square_masks(resolution)).float()[:, None]
    mask = squares[torch.arange(batch) % len(squares)]
    return maps, mask


Attend = Callable[[Sequence[Tensor], Tensor], list[Tensor]]


def forward_backward(attend: Attend, maps: list[Tensor], mask: Tensor,
                     weights: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
    """Filled maps and the gradients of a fixed random linear function of them."""
    for m in maps:
        m.grad = None
    filled = attend(maps, mask)
    sum((f * w).sum() for f, w in zip(filled, weights)).backward()
    return [f.detach() for f in filled], [m.grad.clone() for m in maps]


def attention_pair(maps: list[Tensor], mask: Tensor, seed: int = 1):
    module = MultiLevelAttention(LEVELS, SOFTMAX_SCALE)
    gen = torch.Generator().manual_seed(seed)
    weights = [torch.randn(m.shape, generator=gen) for m in maps[:3]]

    def fast() -> tuple[list[Tensor], list[Tensor]]:
        return forward_backward(module, maps, mask, weights)

    def reference() -> tuple[list[Tensor], list[Tensor]]:
        return forward_backward(
            lambda x, m: pennet_attention(x, m, module.score_level, SOFTMAX_SCALE), maps, mask, weights)

    return fast, reference


def assert_same(fast_result, reference_result) -> None:
    for got, want in zip(fast_result[0] + fast_result[1], reference_result[0] + reference_result[1],
                         strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_pennet_formulation_matches_batched():
    """Small and quick (default run): same maps and gradients at the smoke resolution."""
    maps, mask = make_inputs(32, 4, 8, batch=3)
    mask[1] = 0  # a sample without hole
    fast, reference = attention_pair(maps, mask)
    assert_same(fast(), reference())


@pytest.mark.benchmark
@pytest.mark.parametrize("profile", PROFILES)
def test_bench_attention(benchmark, profile):
    resolution, base_width, max_width = profile_geometry(profile)
    maps, mask = make_inputs(resolution, base_width, max_width, BATCH)
    fast, reference = attention_pair(maps, mask)
    assert_same(fast(), reference())  # also warms both up

    reference_seconds = []
    for _ in range(3):
        start = time.perf_counter()
        reference()
        reference_seconds.append(time.perf_counter() - start)
    benchmark.pedantic(fast, rounds=5, iterations=1)
    fast_seconds = benchmark.stats.stats.data if benchmark.stats else []
    if not fast_seconds:  # --benchmark-disable: time it ourselves
        for _ in range(5):
            start = time.perf_counter()
            fast()
            fast_seconds.append(time.perf_counter() - start)

    ratio = min(reference_seconds) / min(fast_seconds)
    result = {
        "resolution": resolution, "batch": BATCH, "widths": list(level_widths(base_width, max_width)),
        "level_sizes": list(level_sizes(resolution)), "attention_levels": list(LEVELS),
        "masks": "the ten evaluation squares (sides 1/8 .. 1/4 of the image), samples 0..7",
        "fast_ms": round(1000 * min(fast_seconds), 2),
        "pennet_per_sample_ms": round(1000 * min(reference_seconds), 2),
        "speedup": round(ratio, 2),
    }
    report = json.loads(REPORT.read_text()) if REPORT.exists() else {}
    report.update({
        "what": "multi-level attention (ACM at levels 4-6 + ATN into levels 1-3), forward + "
                "backward, best of the rounds: batched matmul vs PEN-Net's per-sample "
                "convolution formulation",
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    })
    report.setdefault("profiles", {})[profile] = result
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nattention {profile} ({resolution}x{resolution}, batch {BATCH}): batched "
          f"{result['fast_ms']} ms, PEN-Net per-sample {result['pennet_per_sample_ms']} ms, "
          f"speedup x{ratio:.1f}")
