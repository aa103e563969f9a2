"""Random-weight torch builds of the published calibration architectures (fit-time only: needs torch,
so it lives in pocketml.convert, not in the torch-free estimator). `python -m pocketml.convert.calibration_zoo`
rebuilds profiler/estimate/data/costs.json.gz.

Layer tables follow the reference definitions: MobileNet V1 (tensorflow/models slim
mobilenet_v1.py), V2 / V3 (slim mobilenet/mobilenet_v2.py, mobilenet_v3.py), MnasNet-A1
(tensorflow/tpu models/official/mnasnet/mnasnet_models.py), EfficientNet-Lite (the
efficientnet-lite-pytorch package), ResNet-18/50 (torchvision resnet.py layout), MobileBERT and
MiniLM-L6 (transformers configs, no download). Batch norm is folded into the conv bias, as every
converter does, so convs carry a bias and no BN op.
"""
from __future__ import annotations

import torch
from torch import nn


def _div(v, divisor=8, min_value=None):
    min_value = min_value or divisor
    new = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


ACT = {"relu": nn.ReLU, "relu6": nn.ReLU6, "hswish": nn.Hardswish, None: nn.Identity}


def conv(cin, cout, k=1, s=1, groups=1, act="relu6"):
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=True), ACT[act]())


class SE(nn.Module):
    def __init__(self, c, mid, gate=nn.Hardsigmoid, act=nn.ReLU):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Conv2d(c, mid, 1), act(), nn.Conv2d(mid, c, 1), gate())

    def forward(self, x):
        return x * self.fc(self.pool(x))


class Block(nn.Module):
    """Inverted residual: [expand 1x1] -> depthwise kxk -> [SE] -> project 1x1 (+ skip)."""

    def __init__(self, cin, exp, cout, k, s, act="relu6", se=None, skip=True):
        super().__init__()
        layers = [] if exp == cin else [conv(cin, exp, 1, act=act)]
        layers.append(conv(exp, exp, k, s, groups=exp, act=act))
        if se:
            layers.append(se(exp))
        layers.append(conv(exp, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.skip = skip and s == 1 and cin == cout

    def forward(self, x):
        y = self.body(x)
        return x + y if self.skip else y


class Net(nn.Module):
    def __init__(self, features, head_in, classes=1001, pre_logits=None):
        super().__init__()
        self.features = nn.Sequential(*features)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.pre = pre_logits or nn.Identity()
        self.fc = nn.Conv2d(head_in, classes, 1)

    def forward(self, x):
        return self.fc(self.pre(self.pool(self.features(x)))).flatten(1)


def mobilenet_v1(alpha=1.0):
    c = lambda n: max(8, int(n * alpha))          # noqa: E731 - slim depth() with min_depth 8
    cfg = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    layers, cin = [conv(3, c(32), 3, 2)], c(32)
    for cout, s in cfg:
        layers += [conv(cin, cin, 3, s, groups=cin), conv(cin, c(cout), 1)]
        cin = c(cout)
    return Net(layers, cin)


def mobilenet_v2(alpha=1.0):
    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
           (6, 320, 1, 1)]
    cin = _div(32 * alpha)
    layers = [conv(3, cin, 3, 2)]
    for t, c, n, s in cfg:
        cout = _div(c * alpha)
        for i in range(n):
            layers.append(Block(cin, cin * t, cout, 3, s if i == 0 else 1))
            cin = cout
    last = _div(1280 * alpha) if alpha > 1.0 else 1280
    layers.append(conv(cin, last, 1))
    return Net(layers, last)


V3_LARGE = [(3, 16, 16, False, "relu", 1), (3, 64, 24, False, "relu", 2), (3, 72, 24, False, "relu", 1),
            (5, 72, 40, True, "relu", 2), (5, 120, 40, True, "relu", 1), (5, 120, 40, True, "relu", 1),
            (3, 240, 80, False, "hswish", 2), (3, 200, 80, False, "hswish", 1),
            (3, 184, 80, False, "hswish", 1), (3, 184, 80, False, "hswish", 1),
            (3, 480, 112, True, "hswish", 1), (3, 672, 112, True, "hswish", 1),
            (5, 672, 160, True, "hswish", 2), (5, 960, 160, True, "hswish", 1), (5, 960, 160, True, "hswish", 1)]
V3_SMALL = [(3, 16, 16, True, "relu", 2), (3, 72, 24, False, "relu", 2), (3, 88, 24, False, "relu", 1),
            (5, 96, 40, True, "hswish", 2), (5, 240, 40, True, "hswish", 1), (5, 240, 40, True, "hswish", 1),
            (5, 120, 48, True, "hswish", 1), (5, 144, 48, True, "hswish", 1), (5, 288, 96, True, "hswish", 2),
            (5, 576, 96, True, "hswish", 1), (5, 576, 96, True, "hswish", 1)]


def mobilenet_v3(size="large", alpha=1.0, minimalistic=False):
    cfg, last, head = (V3_LARGE, 960, 1280) if size == "large" else (V3_SMALL, 576, 1024)
    hs = "relu" if minimalistic else "hswish"
    cin = 16
    layers = [conv(3, cin, 3, 2, act=hs)]
    for k, exp, c, se, act, s in cfg:
        k, act = (3, "relu") if minimalistic else (k, act)
        cout, e = _div(c * alpha), _div(exp * alpha)
        se_mod = (lambda ch: SE(ch, _div(ch / 4))) if se and not minimalistic else None
        layers.append(Block(cin, e, cout, k, s, act=act, se=se_mod))
        cin = cout
    layers.append(conv(cin, _div(last * alpha), 1, act=hs))
    pre = nn.Sequential(nn.Conv2d(_div(last * alpha), head, 1), ACT[hs]())
    return Net(layers, head, pre_logits=pre)


MNAS_A1 = [(1, 3, 1, 1, 32, 16, None), (2, 3, 2, 6, 16, 24, None), (3, 5, 2, 3, 24, 40, 0.25),
           (4, 3, 2, 6, 40, 80, None), (2, 3, 1, 6, 80, 112, 0.25), (3, 5, 2, 6, 112, 160, 0.25),
           (1, 3, 1, 6, 160, 320, None)]


def mnasnet_a1(alpha=1.0):
    f = lambda c: _div(c * alpha)                 # noqa: E731 - round_filters, divisor 8
    cin = f(32)
    layers = [conv(3, cin, 3, 2, act="relu")]
    for i, (r, k, s, e, _, c, se) in enumerate(MNAS_A1):
        for j in range(r):
            cout = f(c)
            se_mod = (lambda ch, cin=cin: SE(ch, max(1, int(cin * se)), gate=nn.Sigmoid)) if se else None
            layers.append(Block(cin, cin * e, cout, k, s if j == 0 else 1, act="relu", se=se_mod,
                                skip=i > 0))
            cin = cout
    layers.append(conv(cin, 1280, 1, act="relu"))
    return Net(layers, 1280)


class Bottleneck(nn.Module):
    """ResNet v1.5 block (torchvision layout: stride on the 3x3); expansion 4, or 1 for basic blocks."""

    def __init__(self, cin, mid, s, basic):
        super().__init__()
        cout = mid if basic else mid * 4
        body = ([conv(cin, mid, 3, s, act="relu"), conv(mid, mid, 3, act=None)] if basic else
                [conv(cin, mid, 1, act="relu"), conv(mid, mid, 3, s, act="relu"), conv(mid, cout, 1, act=None)])
        self.body = nn.Sequential(*body)
        self.down = conv(cin, cout, 1, s, act=None) if s != 1 or cin != cout else nn.Identity()
        self.out = nn.ReLU()

    def forward(self, x):
        return self.out(self.body(x) + self.down(x))


def resnet(depth=50):
    """ResNet-18 / 50 as torchvision builds them (1000 classes), BN folded."""
    blocks, basic = {18: ((2, 2, 2, 2), True), 50: ((3, 4, 6, 3), False)}[depth]
    layers, cin = [conv(3, 64, 7, 2, act="relu"), nn.MaxPool2d(3, 2, 1)], 64
    for i, (n, mid) in enumerate(zip(blocks, (64, 128, 256, 512))):
        for j in range(n):
            layers.append(Bottleneck(cin, mid, 2 if i and not j else 1, basic))
            cin = mid if basic else mid * 4
    return Net(layers, cin, classes=1000)


class Encoder(nn.Module):
    """A Hugging Face encoder with (input_ids, attention_mask) int32 inputs -> last hidden state."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def mobilebert():
    """google/mobilebert-uncased shape (transformers' MobileBertConfig defaults: 24 layers,
    hidden 512, bottleneck 128, 4 heads, 4 stacked FFNs), random weights."""
    from transformers import MobileBertConfig, MobileBertModel
    return Encoder(MobileBertModel(MobileBertConfig(), add_pooling_layer=False))


def minilm():
    """sentence-transformers/all-MiniLM-L6-v2 shape (BERT, 6 layers, hidden 384, 12 heads,
    FFN 1536), random weights."""
    from transformers import BertConfig, BertModel
    cfg = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    return Encoder(BertModel(cfg, add_pooling_layer=False))


def efficientnet_lite(n=0):
    from efficientnet_lite_pytorch import EfficientNet
    return EfficientNet.from_name(f"efficientnet-lite{n}")


def _v3(size, alpha=1.0, mini=False):
    return lambda: mobilenet_v3(size, alpha, mini)


# name -> (builder, input resolution; negative = a text encoder's sequence length). Names are the
# `model` column of measurements.csv and the rows of benchmarks/estimate_zoo.py.
def catalog() -> dict:
    cat = {"mobilenet_v1_1.0_224": (lambda: mobilenet_v1(1.0), 224),
           "resnet18": (lambda: resnet(18), 224), "resnet50": (lambda: resnet(50), 224),
           "mobilebert": (mobilebert, -128), "minilm_l6": (minilm, -128),
           "mobilenet_v3_large_1.0_224": (_v3("large"), 224), "mobilenet_v3_large_0.75_224": (_v3("large", .75), 224),
           "mobilenet_v3_small_1.0_224": (_v3("small"), 224), "mobilenet_v3_small_0.75_224": (_v3("small", .75), 224),
           "mobilenet_v3_large_minimalistic_1.0_224": (_v3("large", 1.0, True), 224),
           "mobilenet_v3_small_minimalistic_1.0_224": (_v3("small", 1.0, True), 224)}
    for a in (1.4, 1.3, 1.0, 0.75, 0.5, 0.35):
        for r in (224, 192, 160, 128, 96):
            cat[f"mobilenet_v2_{a}_{r}"] = ((lambda a=a: mobilenet_v2(a)), r)
            cat[f"mnasnet_a1_{a}_{r}"] = ((lambda a=a: mnasnet_a1(a)), r)
    for a, r in [(a, 224) for a in (0.25, 0.5, 0.75)] + [(1.0, r) for r in (128, 160, 192)]:
        cat[f"mobilenet_v1_{a}_{r}"] = ((lambda a=a: mobilenet_v1(a)), r)
    for n, r in enumerate((224, 240, 260, 280, 300)):
        cat[f"efficientnet_lite{n}"] = ((lambda n=n: efficientnet_lite(n)), r)
    return cat


def build(name: str):
    builder, res = catalog()[name]
    torch.manual_seed(0)
    return builder().eval(), res


# ---- cost tables for fitting (torch + litert-torch; run once, results cached as JSON) ----
CACHE = "/tmp/pocketml-estimate-costs"


def example(res: int) -> tuple:
    """Example inputs: an NHWC image, or (input_ids, attention_mask) of length -res."""
    if res < 0:
        return (torch.randint(0, 1000, (1, -res), dtype=torch.int32), torch.ones(1, -res, dtype=torch.int32))
    return (torch.rand(1, res, res, 3),)


def _tflite(name: str, dst: str) -> None:
    import litert_torch
    model, res = build(name)
    module = model if res < 0 else litert_torch.to_channel_last_io(model, args=[0]).eval()
    litert_torch.convert(module, example(res)).export(dst)


def int8_of(fp32: dict) -> dict:
    """The int8 graph of a published fully-quantized model: the fp32 graph with every op int8 and
    1-byte tensors. (A PT2E-quantized litert-torch export of the same torch module carries extra
    TRANSPOSE / PAD / QUANTIZE ops and fp32 adds that the TF-converted published models do not.)"""
    from pocketml.profiler.estimate.device_model import PRECISIONS
    int8 = PRECISIONS.index("int8")
    return {**fp32, "derived": "int8 from fp32 graph",
            "ops": [[c, int8, m, f, b / 4.0] for c, _, m, f, b in fp32["ops"]]}


def compact(cost) -> dict:
    from pocketml.profiler.estimate.device_model import PRECISIONS
    from pocketml.profiler.estimate.graph_cost import CATEGORIES
    live = cost.live()
    return {"format": cost.format, "macs": sum(o.macs for o in live),
            "ops": [[CATEGORIES.index(o.category), PRECISIONS.index(o.precision), o.macs, o.flops, o.bytes]
                    for o in live]}


def build_costs(keys, only=None, shard=0, nshard=1) -> None:
    """Convert each `model|precision` to TFLite, cost it, cache it; then merge the cache into
    data/costs.json.gz."""
    import gzip
    import json
    import os
    import tempfile

    from pocketml.profiler.estimate.fit import COSTS
    from pocketml.profiler.estimate.graph_cost import graph_cost
    os.makedirs(CACHE, exist_ok=True)
    cached = lambda key: os.path.join(CACHE, key.replace("|", "__") + ".json")   # noqa: E731
    names = sorted({k.split("|")[0] for k in keys if only is None or k in only})[shard::nshard]
    for name in names:
        path = cached(f"{name}|fp32")
        if os.path.exists(path) and only is None:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            _tflite(name, os.path.join(tmp, "m.tflite"))
            cost = compact(graph_cost(os.path.join(tmp, "m.tflite")))
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(cost, fh)
        print(f"{name}: {cost['macs'] / 1e6:.1f} MMACs, {len(cost['ops'])} ops", flush=True)
    merged = {}
    if os.path.exists(COSTS):                                   # keep tables whose cache is gone
        with gzip.open(COSTS, "rt", encoding="utf-8") as fh:
            merged = {k: v for k, v in json.load(fh).items() if k in keys}
    for key in keys:
        name, precision = key.split("|")
        if os.path.exists(cached(f"{name}|fp32")):
            with open(cached(f"{name}|fp32"), encoding="utf-8") as fh:
                fp32 = json.load(fh)
            merged[key] = fp32 if precision == "fp32" else int8_of(fp32)
    with gzip.open(COSTS, "wt", encoding="utf-8") as fh:
        json.dump(merged, fh, separators=(",", ":"))
    print(f"{len(merged)}/{len(keys)} cost tables in {COSTS}")


def main(argv=None) -> int:
    import argparse

    from pocketml.profiler.estimate.fit import load_rows
    ap = argparse.ArgumentParser(prog="python -m pocketml.convert.calibration_zoo",
                                 description="Rebuild the estimator's cost tables (needs torch + litert-torch).")
    ap.add_argument("--only", nargs="*", help="only these model|precision keys")
    ap.add_argument("--shard", default="0/1", help="I/N: convert every N-th key")
    args = ap.parse_args(argv)
    i, n = (int(x) for x in args.shard.split("/"))
    build_costs(sorted({f"{r['model']}|{r['precision']}" for r in load_rows()}), args.only, i, n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
