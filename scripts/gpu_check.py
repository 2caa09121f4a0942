"""The GPU check (docs/GPU.md): speed, memory, counted FLOPs and numerics of every model's
training step at the paper profile, and the evaluation networks' throughput; writes
``reports/benchmarks/gpu.json`` and a markdown table beside it (``gpu.md``).

Runs from a checkout without ``store/`` or ``data/`` and without network: the source comes from
``src/`` and the repository root (``scripts/gpu_check.sh`` sets ``PYTHONPATH``); Python packages
the machine lacks come from a local folder of wheels (``--wheels``), unpacked into
``.gpu_check/site`` and put *after* the machine's own packages on ``sys.path`` (so only what is
missing is taken from them). The training images are its own: 256 px faces are not needed to
time a step, so it draws smooth random images (low-frequency noise, upsampled) and the suite's
own square and irregular-like masks; the upstream models (the prior for the structure model,
the structure model for ``full``) are freshly built and exported into a scratch folder. The
face-recognition weights (``data/weights/faceapi-recognition``, 6 MB) are used when present
(structure's ID loss, the evaluation's identity network); without them the structure model
and the identity network are skipped and the JSON says so.

For each model (prior, structure, full, PConv, RFR) and each configuration (fp32 and bf16,
eager and channels-last, then bf16 + channels-last + ``torch.compile``): images per second of a
training step at the profile's per-process batch, peak memory, compile time; FLOPs per image
of a step counted by ``torch.utils.flop_counter.FlopCounterMode`` and their share of the card's
dense peak (bf16 tensor-core peak for the bf16 rows, TF32 for fp32; from a table of known
cards, ``null`` otherwise). Numerics: the device's fp32 forward against the CPU's (TF32 off)
and the loss after a few bf16 steps against fp32. Then evaluation networks' images per second.
A time budget (``--budget-s``) skips what does not fit, naming it.

    scripts/gpu_check.sh --wheels /path/to/wheels            # on the GPU machine (cuda)
    scripts/gpu_check.sh --device cpu --quick                # the CPU path (smoke profile, seconds)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("stylegan", "structure", "full", "pconv", "rfr")
CONFIGS = (  # name, precision, channels_last, compile
    ("fp32", "fp32", False, "off"),
    ("bf16", "bf16", False, "off"),
    ("fp32+cl", "fp32", True, "off"),
    ("bf16+cl", "bf16", True, "off"),
    ("bf16+cl+compile", "bf16", True, "default"),
)
# Dense (no sparsity) peak throughput in TFLOP/s: bf16 tensor cores, and TF32 (what fp32
# matmuls and convolutions use on these cards when allowed; the suite leaves TF32 at torch's
# default, convolutions on, matmuls off). Vendor datasheets; SXM parts.
PEAKS_TFLOPS = {  # matched in this order against the card's name
    "H100 PCIe": {"bf16": 756.0, "tf32": 378.0},
    "H200": {"bf16": 989.0, "tf32": 494.7},
    "H100": {"bf16": 989.0, "tf32": 494.7},
    "A100": {"bf16": 312.0, "tf32": 156.0},
    "L40S": {"bf16": 362.0, "tf32": 183.0},
    "L4": {"bf16": 121.0, "tf32": 60.0},
    "A10": {"bf16": 125.0, "tf32": 62.5},
}


def unpack_wheels(folder: Path, site: Path) -> list[str]:
    """Unpack every wheel of ``folder`` into ``site`` (once) and append ``site`` to ``sys.path``
    after the machine's own packages; returns the wheels' names."""
    site.mkdir(parents=True, exist_ok=True)
    names = []
    for wheel in sorted(folder.glob("*.whl")):
        names.append(wheel.name)
        marker = site / f".{wheel.name}.done"
        if not marker.exists():
            with zipfile.ZipFile(wheel) as z:
                z.extractall(site)
            marker.touch()
    if str(site) not in sys.path:
        sys.path.append(str(site))
    return names


def card_peak(name: str, precision: str) -> float | None:
    for key, peaks in PEAKS_TFLOPS.items():
        if key in name:
            return peaks["bf16" if precision == "bf16" else "tf32"] * 1e12
    return None


def synthetic_batch(torch, n: int, resolution: int, seed: int):
    """``n`` smooth random RGB images in [-1, 1] and square masks (the training masks' sizes,
    PAPER.md sec. 6a: sides 1/8..1/4) or blob masks (thresholded smooth noise, ~20% hole)."""
    import numpy as np

    from faceinpaint.masks import random_square

    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 8, 8, generator=g) * 2 - 1
    image = torch.nn.functional.interpolate(coarse, size=(resolution, resolution), mode="bicubic", align_corners=False)
    image = (image + 0.05 * torch.randn(n, 3, resolution, resolution, generator=g)).clamp(-1, 1)
    rng = np.random.default_rng(seed)
    masks = []
    for i in range(n):
        if i % 2:
            blob = torch.nn.functional.interpolate(torch.rand(1, 1, 6, 6, generator=g), size=(resolution, resolution),
                                                   mode="bilinear", align_corners=False)[0, 0]
            masks.append((blob > torch.quantile(blob, 0.8)).float())
        else:
            masks.append(torch.from_numpy(random_square(rng, resolution, 0.125, 0.25).astype(np.float32)))
    return {"image": image, "mask": torch.stack(masks)[:, None]}


def build(torch, cfg, name: str, device, runtime=None):
    from faceinpaint.recipes import make_recipe
    from faceinpaint.training import apply_runtime, make_ema

    recipe = make_recipe(cfg, name)
    torch.manual_seed(0)
    modules = dict(recipe.build(device))
    for ema_name, spec in recipe.ema.items():
        modules[ema_name] = make_ema(modules[spec.source])
    optimizers = recipe.optimizers(modules)
    apply_runtime(modules, recipe.trainable, runtime, ema_names=tuple(recipe.ema), eager=recipe.double_backward)
    return recipe, modules, optimizers


def sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(torch, cfg, name, device, config, batch, warmup: int, steps: int) -> dict:
    from faceinpaint.config import RuntimeParams
    from faceinpaint.training import step_context, to_channels_last

    label, precision, channels_last, compile_mode = config
    runtime = RuntimeParams(precision=precision, channels_last=channels_last, compile=compile_mode)
    recipe, modules, optimizers = build(torch, cfg, name, device, runtime)
    if channels_last:
        batch = to_channels_last(batch)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    step = 0
    started = time.perf_counter()
    for _ in range(warmup):
        with step_context(runtime, device):
            recipe.train_step(modules, optimizers, batch, step)
        step += 1
    sync(torch, device)
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        with step_context(runtime, device):
            losses = recipe.train_step(modules, optimizers, batch, step)
        step += 1
    sync(torch, device)
    elapsed = time.perf_counter() - started
    n = len(batch["image"])
    out = {"config": label, "batch": n, "img_per_s": round(n * steps / elapsed, 2),
           "sec_per_step": round(elapsed / steps, 5), "warmup_s": round(first, 2),
           "finite": all(math.isfinite(float(v)) for v in losses.values())}
    if device.type == "cuda":
        out["peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def flop_counter():
    """A dispatch mode that sums ``torch.utils.flop_counter``'s FLOP formulas over every op it
    sees. ``FlopCounterMode`` itself also tracks the module hierarchy with backward hooks, which
    ``autograd.grad`` (R1, gradient penalty, path length) does not support; the counts are the same."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counter(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.total += formula(*args, **kwargs, out_val=out)
            return out

    return Counter()


def count_flops(torch, cfg, name, device, batch, step: int = 0) -> float:
    """FLOPs of one fp32 training step (forward, backward, the recipe's every pass) per image."""
    recipe, modules, optimizers = build(torch, cfg, name, device)
    with flop_counter() as counter:
        recipe.train_step(modules, optimizers, batch, step)
    return counter.total / len(batch["image"])


def schedule_flops(torch, cfg, device, batch_images: int = 2) -> dict:
    """The profile's training schedule in counted FLOPs: per model, FLOPs of a step per image
    (``batch_images`` images a step; the cost per image does not depend on the batch) at the
    step indices that do and do not carry the prior's lazy regularisers (R1 every
    ``d_reg_every``, path length every ``g_reg_every`` steps, each counted at its share), times
    ``max_steps x batch_size`` images of the schedule."""
    from faceinpaint.models import MODELS, TRAINED

    out = {}
    for name in TRAINED:
        recipe, modules, optimizers = build(torch, cfg, name, device)
        batch = {k: v.to(device) for k, v in synthetic_batch(torch, batch_images, cfg.resolution, 0).items()}

        def flops(step: int) -> float:
            with flop_counter() as counter:
                recipe.train_step(modules, optimizers, batch, step)
            return counter.total / batch_images

        section = getattr(cfg, MODELS[name].section)
        if name == "stylegan":
            p = cfg.stylegan
            plain = flops(1)  # neither regulariser (1 % 16, 1 % 4 != 0 for every period above 1)
            with_g = flops(p.g_reg_every) if p.g_reg_every % p.d_reg_every else None
            both = flops(0)
            g_extra = (with_g - plain) if with_g is not None else 0.0
            d_extra = both - plain - g_extra
            per_image = plain + g_extra / p.g_reg_every + d_extra / p.d_reg_every
        else:
            per_image = flops(0)
        images = cfg.profile.max_steps(name) * section.batch_size
        out[name] = {"gflops_per_image": round(per_image / 1e9, 2), "images": images,
                     "eflop": round(per_image * images / 1e18, 3)}
        print(f"{name:10s} {out[name]}", flush=True)
    out["total_eflop"] = round(sum(v["eflop"] for v in out.values()), 3)
    return out


def forward_output(torch, recipe, modules, batch):
    from faceinpaint.training import unwrap

    with torch.no_grad():
        if recipe.name == "stylegan":
            z = torch.randn(len(batch["image"]), recipe.p.style_dim, generator=torch.Generator().manual_seed(3))
            return unwrap(modules["G"])([z.to(batch["image"].device)], randomize_noise=False)[0].float().cpu()
        inpaint, nets = recipe.inference(modules)
        for net in nets:
            net.eval()
        image, mask = batch["image"], batch["mask"]
        return inpaint(image * (1 - mask), mask)["composite"].float().cpu()


def numerics(torch, cfg, name, device, batch, steps: int = 3) -> dict:
    """Device fp32 forward vs CPU fp32 forward (TF32 off), and the loss after ``steps`` bf16
    steps vs fp32 steps on the device."""
    from faceinpaint.config import RuntimeParams
    from faceinpaint.training import step_context

    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        small = {k: v[:2] for k, v in batch.items()}
        r_cpu, m_cpu, _ = build(torch, cfg, name, torch.device("cpu"))
        r_dev, m_dev, _ = build(torch, cfg, name, device)
        ref = forward_output(torch, r_cpu, m_cpu, small)
        got = forward_output(torch, r_dev, m_dev, {k: v.to(device) for k, v in small.items()})
        forward_diff = float((ref - got).abs().max())
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    final = {}
    for precision in ("fp32", "bf16"):
        runtime = RuntimeParams(precision=precision)
        recipe, modules, optimizers = build(torch, cfg, name, device, runtime)
        torch.manual_seed(1)
        for step in range(steps):
            with step_context(runtime, device):
                losses = recipe.train_step(modules, optimizers, batch, step)
        final[precision] = {k: float(v) for k, v in losses.items()}
    # the objectives (a recipe's total loss of each network), not terms that are differences
    # near zero (e.g. the critic's Wasserstein estimate), whose relative error means nothing
    totals = [k for k in ("total", "g_total", "d_total", "g_loss", "d_loss") if k in final["fp32"]]
    rel = {k: abs(final["bf16"][k] - final["fp32"][k]) / max(abs(final["fp32"][k]), 1e-6) for k in totals}
    worst = max(rel, key=rel.get)
    return {"forward_max_abs_diff_vs_cpu": forward_diff, "forward_tolerance": 1e-3,
            "forward_ok": forward_diff <= 1e-3, "bf16_vs_fp32_steps": steps,
            "bf16_vs_fp32_worst_loss": worst, "bf16_vs_fp32_worst_rel": round(rel[worst], 5),
            "bf16_tolerance_rel": 0.1, "bf16_ok": rel[worst] <= 0.1}


def evaluation_speed(torch, cfg, device, batch_size: int, batches: int, have_identity: bool) -> dict:
    """Images per second of the evaluation's networks on the device: the ``full`` inpainter and
    the metric networks (LPIPS, FD features, identity), fp32 eager; PSNR/SSIM (host) excluded."""
    from faceinpaint.data import identity_box_fraction
    from faceinpaint.pretrained import IdentityEmbedder, fid_feature_extractor, load_face_recognition, lpips_metric

    recipe, modules, _ = build(torch, cfg, "full", device)
    inpaint, nets = recipe.inference(modules)
    for net in nets:
        net.eval()
    lpips = lpips_metric(cfg.backbones.lpips).to(device)
    fid = fid_feature_extractor(cfg.backbones.fid).to(device)
    identity = (IdentityEmbedder(load_face_recognition(cfg.backbones.face_recognition), identity_box_fraction(cfg)).to(device)
                if have_identity else None)
    data = {k: v.to(device) for k, v in synthetic_batch(torch, batch_size, cfg.resolution, 7).items()}

    def one():
        image, mask = data["image"], data["mask"]
        out = inpaint(image * (1 - mask), mask)["composite"]
        lpips(out, image)
        fid(out)
        if identity is not None:
            identity(out)

    with torch.no_grad():
        one()
        sync(torch, device)
        started = time.perf_counter()
        for _ in range(batches):
            one()
        sync(torch, device)
    elapsed = time.perf_counter() - started
    return {"img_per_s": round(batch_size * batches / elapsed, 1), "batch": batch_size,
            "networks": ["full inpainter", f"lpips ({cfg.backbones.lpips})", f"fd features ({cfg.backbones.fid})"]
            + (["identity (faceapi-recognition)"] if identity is not None else [])}


def table(report: dict) -> str:
    lines = [f"GPU check on {report['device_name']} (torch {report['torch']}, profile {report['profile']}, "
             f"{report['resolution']} px):", "",
             "| model | config | img/s | peak MiB | FLOPs/img | share of peak |", "|---|---|---|---|---|---|"]
    for name, m in report["models"].items():
        for row in m.get("speed", []):
            share = row.get("share_of_peak")
            lines.append(f"| {name} | {row['config']} | {row.get('img_per_s', row.get('skipped', ''))} | "
                         f"{row.get('peak_mib', '')} | {m.get('gflops_per_image', '')} G | "
                         f"{'' if share is None else f'{100 * share:.1f}%'} |")
    ev = report.get("evaluation", {})
    if "img_per_s" in ev:
        lines += ["", f"Evaluation networks: {ev['img_per_s']} img/s (batch {ev['batch']})."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="smoke profile, 1 timed step, no compile (the CPU path)")
    ap.add_argument("--wheels", type=Path, default=None, help="folder of wheels for what the machine lacks")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON report (default: reports/benchmarks/gpu.json on cuda, gpu_check_cpu.json on cpu)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip what starts after this many seconds")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per configuration")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--schedule-flops", action="store_true",
                    help="only count the FLOPs of the profile's whole training schedule (paper; any device)")
    args = ap.parse_args(argv)
    started = time.monotonic()
    if args.out is None:
        args.out = ROOT / "reports/benchmarks" / ("gpu.json" if args.device.startswith("cuda") else "gpu_check_cpu.json")
    args.out = args.out.resolve()
    wheels = unpack_wheels(args.wheels, ROOT / ".gpu_check/site") if args.wheels else []

    import torch
    import yaml

    from faceinpaint.config import parse_params
    from faceinpaint.recipes import export_model

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda asked for, but torch sees no CUDA device", file=sys.stderr)
        return 2
    profile = "smoke" if args.quick else "paper"
    steps = args.steps or (1 if args.quick else 10)
    warmup = 1 if args.quick else 3
    configs = [c for c in CONFIGS if not (args.quick and c[3] != "off")]
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw = dict(raw, profile=profile, device="cpu", nproc=1)
    weights = ROOT / "data/weights/faceapi-recognition"
    have_identity = weights.is_dir()
    raw["backbones"] = dict(raw["backbones"], face_recognition=str(weights))
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    (work / "params.yaml").write_text(yaml.safe_dump(raw))
    cfg = parse_params(raw, str(work / "params.yaml"))
    os.chdir(work)  # the recipes find their upstream models under artifacts/models here

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    report = {"device": str(device), "device_name": name, "torch": torch.__version__, "cuda": torch.version.cuda,
              "python": platform.python_version(), "profile": profile, "resolution": cfg.resolution,
              "backbones": {"perceptual": cfg.backbones.perceptual, "lpips": cfg.backbones.lpips, "fid": cfg.backbones.fid},
              "wheels_used": wheels, "timed_steps": steps, "warmup_steps": warmup,
              "peak_tflops": {"bf16": card_peak(name, "bf16"), "fp32(tf32)": card_peak(name, "fp32")},
              "models": {}}
    # upstream files: a freshly built prior and structure model, exported where the recipes look
    for up in ("stylegan", "structure"):
        if up == "structure" and not have_identity:
            break
        recipe, modules, _ = build(torch, cfg, up, torch.device("cpu"))
        export_model(cfg, recipe, modules, Path("artifacts/models") / up)

    if args.schedule_flops:
        report["schedule"] = schedule_flops(torch, cfg, device)
        report["total_s"] = round(time.monotonic() - started, 1)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
        return 0
    wanted = [m for m in args.models.split(",") if m]
    for model in wanted:
        entry: dict = {"speed": []}
        report["models"][model] = entry
        if model in ("structure", "full") and not have_identity:
            entry["skipped"] = f"needs the face-recognition weights in {weights} (the ID loss)"
            continue
        section = cfg.profile.stylegan if model == "stylegan" else getattr(cfg, "texture" if model == "full" else model)
        batch = {k: v.to(device) for k, v in synthetic_batch(torch, section.batch_size, cfg.resolution, 0).items()}
        try:
            entry["gflops_per_image"] = round(count_flops(torch, cfg, model, device, batch) / 1e9, 2)
        except Exception as err:  # noqa: BLE001 - recorded, the check goes on
            entry["gflops_error"] = repr(err)
        for config in configs:
            if time.monotonic() - started > args.budget_s:
                entry["speed"].append({"config": config[0], "skipped": "time budget"})
                continue
            try:
                row = time_steps(torch, cfg, model, device, config, batch, warmup, steps)
            except Exception as err:  # noqa: BLE001
                row = {"config": config[0], "error": repr(err)[:500]}
            peak = card_peak(name, config[1]) if device.type == "cuda" else None
            if peak and "img_per_s" in row and "gflops_per_image" in entry:
                row["share_of_peak"] = round(entry["gflops_per_image"] * 1e9 * row["img_per_s"] / peak, 4)
            entry["speed"].append(row)
            print(f"{model:10s} {config[0]:16s} {row}", flush=True)
        if time.monotonic() - started <= args.budget_s:
            try:
                entry["numerics"] = numerics(torch, cfg, model, device, batch)
            except Exception as err:  # noqa: BLE001
                entry["numerics"] = {"error": repr(err)[:500]}
    if time.monotonic() - started <= args.budget_s + 60:
        try:
            report["evaluation"] = evaluation_speed(torch, cfg, device, 8 if args.quick else 64, 2 if args.quick else 10,
                                                    have_identity)
        except Exception as err:  # noqa: BLE001
            report["evaluation"] = {"error": repr(err)[:500]}
    report["total_s"] = round(time.monotonic() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table(report))
    print(table(report))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')} in {report['total_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
