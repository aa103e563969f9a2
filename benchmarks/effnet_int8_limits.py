"""What limits EfficientNet-Lite0 int8 top-1 agreement with fp32 (issue 6: ≥ 98 % at ≥ 2× ORT fp32).

Three measurements on the built-in evaluation views (342 views of 9 photos), against torch fp32:
1. agreement vs logit error: fp32 logits plus i.i.d. Gaussian noise of a given mean |error| (50 draws):
   how small int8's logit error must be for ≥ 0.98 on these views;
2. where int8's error comes from: pocketml's TFLite int8 recipe (cnn_int8.py) simulated in torch with
   fake quantization, calibrated as the exporter does, then with only the weights or only the
   activations quantized;
3. with --qat-steps N: quantization-aware fine-tuning of that int8 graph (weights trained, activation
   ranges frozen) to reproduce the fp32 logits on random crops/mirrors of the calibration photos
   (--train-photos adds evaluation photos to training and then reports only the other ones).

    python benchmarks/effnet_int8_limits.py                       # 1 + 2, about 2 min on 2 cores
    python benchmarks/effnet_int8_limits.py --qat-steps 300       # + 3, about 10 min more
"""
from __future__ import annotations

import argparse
import time

import numpy as np

BATCH = 32


def logits(fn, views: np.ndarray) -> np.ndarray:
    import torch
    with torch.no_grad():
        return np.concatenate([fn(torch.from_numpy(views[i:i + BATCH])).numpy() for i in range(0, len(views), BATCH)])


def noise_model(ref: np.ndarray) -> None:
    top2 = np.sort(ref, 1)[:, -2:]
    gap = top2[:, 1] - top2[:, 0]
    print(f"fp32 top-two logit gap over the {len(ref)} views: 1 % {np.quantile(gap, .01):.3f}, "
          f"2 % {np.quantile(gap, .02):.3f}, 5 % {np.quantile(gap, .05):.3f}, median {np.median(gap):.2f}")
    rng = np.random.default_rng(0)
    print("| mean |logit error| | top-1 agreement (mean of 50 draws) | 5–95 % of draws |\n|---|---|---|")
    for err in (0.01, 0.02, 0.03, 0.04, 0.05, 0.06):
        sd = err / np.sqrt(2 / np.pi)
        ag = [(np.argmax(ref + rng.normal(0, sd, ref.shape), 1) == ref.argmax(1)).mean() for _ in range(50)]
        print(f"| {err:.2f} | {np.mean(ag):.3f} | {np.quantile(ag, .05):.3f}–{np.quantile(ag, .95):.3f} |")


def fake_quant_graph(spec, calib, bias_correction=True):
    """The TFLite int8 recipe as a torch graph with FakeQuantize modules, calibrated on `calib`
    (the exporter's 64 views, one thread); batch dimension dynamic. Without bias correction when
    the weights are to stay float (the correction is for their int8 rounding)."""
    import torch

    import litert_torch
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from pocketml.convert.exporters import cnn_int8

    skip = cnn_int8.FLOAT_LEADING_CONVS if bias_correction else 10**9     # convs left out of bias correction
    source = cnn_int8.torch_prepare(spec.module, [s[0] for s in calib.samples], skip)
    module = litert_torch.to_channel_last_io(source, args=[0]).eval()
    x = torch.from_numpy(nhwc(np.concatenate([calib.samples[0][0]] * 2)))
    graph = torch.export.export(module, (x,), dynamic_shapes=(({0: torch.export.Dim("batch", max=4096)},),))
    fq = prepare_qat_pt2e(graph.module(), cnn_int8.make_pt2e_quantizer(qat=True))
    move_exported_model_to_eval(fq)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with torch.no_grad():
        for s in calib.samples:
            fq(torch.from_numpy(nhwc(s[0])))
    torch.set_num_threads(threads)
    return fq


def nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def fake_quants(graph):
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize
    return [m for m in graph.modules() if isinstance(m, FakeQuantize)]


def report(tag: str, out: np.ndarray, ref: np.ndarray) -> None:
    print(f"| {tag} | {(out.argmax(1) == ref.argmax(1)).mean():.3f} | {np.abs(out - ref).mean():.4f} |")


def error_split(graph, plain, views, ref) -> None:
    """`graph`: the recipe; `plain`: the same without bias correction, for activations-only int8."""
    print("| int8 simulated (fake quantization) | top-1 agreement | mean |logit error| |\n|---|---|---|")
    report("weights and activations int8 (the TFLite recipe)", logits(lambda x: graph(torch_nhwc(x)), views), ref)
    for tag, g, weights in (("weights int8 only (bias-corrected), activations float", graph, True),
                            ("activations int8 only, weights float", plain, False)):
        for m in fake_quants(g):
            if m.is_per_channel != weights:
                m.disable_fake_quant()
        report(tag, logits(lambda x: g(torch_nhwc(x)), views), ref)   # noqa: B023
        for m in fake_quants(g):
            m.enable_fake_quant()


def torch_nhwc(x):
    import torch
    return torch.from_numpy(nhwc(x.numpy()))


def crops(images: np.ndarray, n: int, rng) -> np.ndarray:
    """n random crops (25–100 % of the area, aspect 3:4–4:3) of the NCHW images, resized back, half mirrored."""
    import torch
    import torch.nn.functional as F
    _, _, h, w = images.shape
    out = np.empty((n, *images.shape[1:]), dtype=np.float32)
    for k in range(n):
        area, aspect = rng.uniform(0.25, 1.0), np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch = min(h, max(1, round(np.sqrt(area * h * w / aspect))))
        cw = min(w, max(1, round(np.sqrt(area * h * w * aspect))))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = torch.from_numpy(images[rng.integers(len(images)), :, y:y + ch, x:x + cw][None].copy())
        view = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)[0].numpy()
        out[k] = view[:, :, ::-1] if rng.random() < 0.5 else view
    return out


def qat(graph, teacher, train: np.ndarray, steps: int, lr: float, views, ref) -> None:
    import torch
    for m in fake_quants(graph):               # activation ranges stay as calibrated
        if not m.is_per_channel:
            m.disable_observer()
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    pool = crops(train, 1536, rng)
    target = torch.from_numpy(logits(teacher, pool))
    opt = torch.optim.Adam([p for p in graph.parameters() if p.requires_grad], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    run = lambda x: graph(torch_nhwc(x))   # noqa: E731
    print(f"| QAT step | training loss (MSE to fp32 logits) | top-1 agreement | mean |logit error| |\n|---|---|---|---|")
    losses, t0 = [], time.perf_counter()
    for step in range(1, steps + 1):
        pick = rng.integers(0, len(pool), 16)
        loss = torch.nn.functional.mse_loss(graph(torch.from_numpy(nhwc(pool[pick]))), target[pick])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps:
            out = logits(run, views)
            print(f"| {step} | {np.mean(losses[-20:]):.4f} | {(out.argmax(1) == ref.argmax(1)).mean():.3f} | "
                  f"{np.abs(out - ref).mean():.4f} |", flush=True)
    print(f"({steps} steps in {time.perf_counter() - t0:.0f} s; first-20-step loss {np.mean(losses[:20]):.4f})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qat-steps", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--train-photos", default="", help="evaluation photos added to QAT training, e.g. chelsea,clock")
    args = ap.parse_args()
    from pocketml.runtime.quiet import quiet
    from pocketml.convert import datasets
    from pocketml.convert.builtins import efficientnet_lite0
    from pocketml.convert.exporters.tflite import PT2E_SAMPLES
    from pocketml.runtime.data import preprocess_image

    quiet(verbose=False)
    spec = efficientnet_lite0()
    extra = [p for p in args.train_photos.split(",") if p]
    held = [p for p in datasets.EVAL_PHOTOS if p not in extra]
    views = np.concatenate([preprocess_image(np.ascontiguousarray(v), spec.preprocessing)
                            for p in held for v in datasets._dense_views(datasets._photo(p))])
    print(f"evaluation: {len(views)} views of {len(held)} photos ({', '.join(held)}); reference torch fp32")
    ref = logits(spec.module, views)
    noise_model(ref)
    calib = spec.calib.spread(PT2E_SAMPLES)
    graph = fake_quant_graph(spec, calib)
    error_split(graph, fake_quant_graph(spec, calib, bias_correction=False), views, ref)
    if args.qat_steps:
        train = np.concatenate([s[0] for s in spec.calib.samples] + [
            preprocess_image(np.ascontiguousarray(v), spec.preprocessing)
            for p in extra for v in datasets._dense_views(datasets._photo(p))])
        print(f"QAT on crops of {len(train)} views ({len(datasets.CALIB_PHOTOS) + len(extra)} photos), "
              f"Adam lr {args.lr:g} cosine, batch 16")
        qat(graph, spec.module, train, args.qat_steps, args.lr, views, ref)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
