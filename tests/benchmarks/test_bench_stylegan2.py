"""Speed of one StyleGAN2 training step: our CPU formulation against the reference one.

The reference formulation is written here from the StyleGAN2 equations the way rosinality's
``stylegan2-pytorch`` computes them on its pure-PyTorch path: per-sample modulated and
demodulated weights applied with a grouped convolution (``groups = batch``), and every FIR
filter as ``upfirdn2d`` (zero-stuffing, padding, then a single-channel convolution over all
``batch * channels`` maps). It reads the parameters of our modules, so both formulations
train the very same networks and must give the same losses.

Run (no conftest needed):
    python -m pytest tests/benchmarks/test_bench_stylegan2.py -m benchmark --benchmark-enable
It prints images/s of both and writes ``reports/benchmarks/stylegan2_train_step.json``.
The small equivalence test in this file runs in the default test run.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from torch import Tensor
from torch.nn import functional as F

from faceinpaint.config import load_config
from faceinpaint.stylegan2 import (
    ConvLayer,
    Discriminator,
    Generator,
    ModulatedConv2d,
    ResBlock,
    StyledConv,
    ToRGB,
    d_logistic_loss,
    g_nonsaturating_loss,
)

ROOT = Path(__file__).resolve().parents[2]
REPORT = ROOT / "reports" / "benchmarks" / "stylegan2_train_step.json"

# The cpu profile of params.yaml: its resolution, StyleGAN2 batch size and widths.
_CPU = load_config(ROOT / "params.yaml", "cpu")
SIZE, BATCH = _CPU.resolution, _CPU.stylegan.batch_size
CHANNEL_MAX, CHANNEL_MULTIPLIER = _CPU.stylegan.channel_max, _CPU.stylegan.channel_multiplier
STYLE_DIM, N_MLP = _CPU.stylegan.style_dim, _CPU.stylegan.n_mlp


# ------------------------------------------------------------- reference formulation


def upfirdn2d_reference(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1,
                        pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample by zero-stuffing, zero-pad, convolve (true convolution) every map with
    ``kernel`` alone, keep every ``down``-th pixel (non-negative pads only)."""
    n, c, h, w = x.shape
    out = x.reshape(n * c, h, 1, w, 1)
    out = F.pad(out, [0, up - 1, 0, 0, 0, up - 1]).reshape(n * c, 1, h * up, w * up)
    out = F.pad(out, [pad[0], pad[1], pad[0], pad[1]])
    out = F.conv2d(out, kernel.flip((0, 1))[None, None])[:, :, ::down, ::down]
    return out.reshape(n, c, out.shape[2], out.shape[3])


def modulated_conv_reference(conv: ModulatedConv2d, x: Tensor, style: Tensor) -> Tensor:
    """StyleGAN2 eq. 1-3 with a per-sample weight and a grouped convolution."""
    n, cin, h, w = x.shape
    s = conv.modulation(style)
    weight = conv.scale * conv.weight * s.view(n, 1, cin, 1, 1)  # n x out x in x k x k
    if conv.demodulate:
        weight = weight * torch.rsqrt(weight.square().sum((2, 3, 4)) + 1e-8).view(n, -1, 1, 1, 1)
    k = conv.kernel_size
    x = x.reshape(1, n * cin, h, w)
    if conv.upsample:
        weight = weight.transpose(1, 2).reshape(n * cin, conv.out_channel, k, k)
        out = F.conv_transpose2d(x, weight, stride=2, groups=n)
        out = out.reshape(n, conv.out_channel, out.shape[2], out.shape[3])
        return upfirdn2d_reference(out, conv.blur.kernel, pad=conv.blur.pad)
    out = F.conv2d(x, weight.reshape(n * conv.out_channel, cin, k, k), padding=k // 2, groups=n)
    return out.reshape(n, conv.out_channel, h, w)


def bias_leaky_relu_reference(x: Tensor, bias: Tensor) -> Tensor:
    return F.leaky_relu(x + bias.view(1, -1, 1, 1), 0.2) * math.sqrt(2)


def styled_conv_reference(layer: StyledConv, x: Tensor, style: Tensor, noise: Tensor) -> Tensor:
    out = modulated_conv_reference(layer.conv, x, style) + layer.noise.weight * noise
    return bias_leaky_relu_reference(out, layer.activate.bias)


def to_rgb_reference(layer: ToRGB, x: Tensor, style: Tensor, skip: Tensor | None) -> Tensor:
    out = modulated_conv_reference(layer.conv, x, style) + layer.bias
    if skip is not None:
        out = out + upfirdn2d_reference(skip, layer.upsample.kernel, up=2, pad=layer.upsample.pad)
    return out


def generator_reference(g: Generator, z: Tensor, noise: Sequence[Tensor]) -> Tensor:
    """Synthesis from one z (no mixing) with the given noise maps."""
    latent = g.style(z).unsqueeze(1).repeat(1, g.n_latent, 1)
    out = g.input.input.repeat(z.shape[0], 1, 1, 1)
    out = styled_conv_reference(g.conv1, out, latent[:, 0], noise[0])
    skip = to_rgb_reference(g.to_rgb1, out, latent[:, 1], None)
    for block, (up_conv, conv, to_rgb) in enumerate(zip(g.convs[::2], g.convs[1::2], g.to_rgbs)):
        i = 2 * block + 1
        out = styled_conv_reference(up_conv, out, latent[:, i], noise[i])
        out = styled_conv_reference(conv, out, latent[:, i + 1], noise[i + 1])
        skip = to_rgb_reference(to_rgb, out, latent[:, i + 2], skip)
    return skip


def conv_layer_reference(layer: ConvLayer, x: Tensor) -> Tensor:
    modules = list(layer)
    stride = 1
    if len(modules) and hasattr(modules[0], "kernel"):
        blur = modules.pop(0)
        x = upfirdn2d_reference(x, blur.kernel, pad=blur.pad)
        stride = 2
    conv = modules.pop(0)
    x = F.conv2d(x, conv.weight * conv.scale, conv.bias, stride=stride, padding=conv.padding)
    if modules:
        x = bias_leaky_relu_reference(x, modules[0].bias)
    return x


def discriminator_reference(d: Discriminator, x: Tensor) -> Tensor:
    out = conv_layer_reference(d.convs[0], x)
    for block in d.convs[1:]:
        assert isinstance(block, ResBlock)
        main = conv_layer_reference(block.conv2, conv_layer_reference(block.conv1, out))
        out = (main + conv_layer_reference(block.skip, out)) / math.sqrt(2)
    n, c, h, w = out.shape
    group = min(n, 4)
    stddev = out.view(group, -1, 1, c, h, w)
    stddev = torch.sqrt(stddev.var(0, unbiased=False) + 1e-8).mean([2, 3, 4], keepdim=True)
    stddev = stddev.squeeze(2).repeat(group, 1, h, w)
    out = conv_layer_reference(d.final_conv, torch.cat([out, stddev], 1))
    lin1, lin2 = d.final_linear
    out = F.leaky_relu(F.linear(out.view(n, -1), lin1.weight * lin1.scale,
                                lin1.bias * lin1.lr_mul), 0.2) * math.sqrt(2)
    return F.linear(out, lin2.weight * lin2.scale, lin2.bias * lin2.lr_mul)


# ----------------------------------------------------------------------- training step


def training_step(generate: Callable[[Tensor, list[Tensor]], Tensor],
                  discriminate: Callable[[Tensor], Tensor], g: Generator, d: Discriminator,
                  batch: dict[str, Tensor | list[Tensor]]) -> tuple[float, float]:
    """rosinality's step without the lazy regularisers: D step (fakes from a frozen G, D
    on real and fake, backward into D), then G step (fresh fakes, frozen D, backward
    into G). Optimiser updates are left out (identical for both formulations)."""
    g.requires_grad_(False)
    d.requires_grad_(True)
    fake = generate(batch["z_d"], batch["noise_d"])
    d_loss = d_logistic_loss(discriminate(batch["real"]), discriminate(fake))
    d.zero_grad(set_to_none=True)
    d_loss.backward()

    g.requires_grad_(True)
    d.requires_grad_(False)
    fake = generate(batch["z_g"], batch["noise_g"])
    g_loss = g_nonsaturating_loss(discriminate(fake))
    g.zero_grad(set_to_none=True)
    g_loss.backward()
    return d_loss.item(), g_loss.item()


def make_networks(size: int, channel_max: int, channel_multiplier: int, style_dim: int,
                  n_mlp: int) -> tuple[Generator, Discriminator]:
    torch.manual_seed(0)
    g = Generator(size, style_dim, n_mlp, channel_multiplier, channel_max)
    d = Discriminator(size, channel_multiplier, channel_max)
    # Non-zero noise strengths and biases so that every term of the maths is exercised.
    with torch.no_grad():
        for name, param in list(g.named_parameters()) + list(d.named_parameters()):
            if name.endswith("noise.weight") or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    return g, d


def make_batch(g: Generator, batch: int) -> dict[str, Tensor | list[Tensor]]:
    gen = torch.Generator().manual_seed(1)

    def noise() -> list[Tensor]:
        return [torch.randn(batch, 1, *n.shape[2:], generator=gen) for n in g.make_noise()]

    return {"real": torch.rand(batch, 3, g.size, g.size, generator=gen) * 2 - 1,
            "z_d": torch.randn(batch, g.style_dim, generator=gen), "noise_d": noise(),
            "z_g": torch.randn(batch, g.style_dim, generator=gen), "noise_g": noise()}


def fast_generate(g: Generator) -> Callable[[Tensor, list[Tensor]], Tensor]:
    return lambda z, noise: g([z], noise=noise)[0]


def reference_generate(g: Generator) -> Callable[[Tensor, list[Tensor]], Tensor]:
    return lambda z, noise: generator_reference(g, z, noise)


def test_reference_formulation_matches_fast_modules():
    """Whole-network check (small and quick, part of the default run): images, logits and
    both losses and all gradients agree between the two formulations."""
    g, d = make_networks(size=16, channel_max=16, channel_multiplier=1, style_dim=16, n_mlp=2)
    batch = make_batch(g, 8)
    fast_losses = training_step(fast_generate(g), d, g, d, batch)
    fast_grads = {n: p.grad.clone() for n, p in [*g.named_parameters(), *d.named_parameters()]
                  if p.grad is not None}
    ref_losses = training_step(reference_generate(g), lambda x: discriminator_reference(d, x),
                               g, d, batch)
    ref_grads = {n: p.grad for n, p in [*g.named_parameters(), *d.named_parameters()]
                 if p.grad is not None}
    assert fast_losses == pytest.approx(ref_losses, rel=1e-5)
    assert fast_grads.keys() == ref_grads.keys()
    for name in fast_grads:
        torch.testing.assert_close(fast_grads[name], ref_grads[name], rtol=1e-4, atol=1e-5,
                                   msg=name)


def best_seconds(step: Callable[[], tuple[float, float]], rounds: int
                 ) -> tuple[float, float, tuple[float, float]]:
    """Best wall-clock and best process CPU seconds of ``rounds`` calls, and the losses."""
    wall, cpu = [], []
    for _ in range(rounds):
        start, start_cpu = time.perf_counter(), time.process_time()
        losses = step()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return min(wall), min(cpu), losses


@pytest.mark.benchmark
def test_bench_training_step(benchmark):
    """One training step of the cpu profile (SIZE, BATCH, CHANNEL_MAX): fast vs reference formulation.
    Best of a few rounds each (the machine's cores may be shared)."""
    g, d = make_networks(SIZE, CHANNEL_MAX, CHANNEL_MULTIPLIER, STYLE_DIM, N_MLP)
    batch = make_batch(g, BATCH)

    def fast_step() -> tuple[float, float]:
        return training_step(fast_generate(g), d, g, d, batch)

    def reference_step() -> tuple[float, float]:
        return training_step(reference_generate(g), lambda x: discriminator_reference(d, x),
                             g, d, batch)

    load_before = os.getloadavg()[0]
    fast_step()  # warm-up
    fast_s, fast_cpu_s, fast_losses = best_seconds(fast_step, 3)
    reference_s, reference_cpu_s, reference_losses = best_seconds(reference_step, 2)
    assert fast_losses == pytest.approx(reference_losses, rel=1e-4)
    benchmark.pedantic(fast_step, rounds=1, iterations=1)  # for pytest-benchmark's table

    fast_ips, reference_ips = BATCH / fast_s, BATCH / reference_s
    result = {
        "what": "StyleGAN2 training step (D step + G step as in rosinality's train.py, "
                "without the lazy R1 / path-length regularisers and without the optimiser "
                "update); images of the real batch per second, best of the rounds",
        "size": SIZE, "batch": BATCH, "channel_max": CHANNEL_MAX,
        "channel_multiplier": CHANNEL_MULTIPLIER, "style_dim": STYLE_DIM, "n_mlp": N_MLP,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "load_average_1min": {"before": round(load_before, 2),
                              "after": round(os.getloadavg()[0], 2)},
        "fast_seconds_per_step": round(fast_s, 3),
        "reference_seconds_per_step": round(reference_s, 3),
        "fast_cpu_seconds_per_step": round(fast_cpu_s, 3),
        "reference_cpu_seconds_per_step": round(reference_cpu_s, 3),
        "fast_images_per_s": round(fast_ips, 3),
        "reference_images_per_s": round(reference_ips, 3),
        "speedup": round(fast_ips / reference_ips, 2),
        "cpu_time_ratio": round(reference_cpu_s / fast_cpu_s, 2),
        "fast_losses": fast_losses, "reference_losses": reference_losses,
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nStyleGAN2 step at {SIZE}x{SIZE}, batch {BATCH}, width cap {CHANNEL_MAX}: "
          f"fast {fast_ips:.2f} img/s, reference {reference_ips:.2f} img/s, "
          f"speedup x{fast_ips / reference_ips:.2f} (load average {load_before:.1f})")
