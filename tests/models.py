"""Tiny synthetic models for the test suite: `module:function` factories returning (nn.Module, example_inputs).

Each factory seeds torch, so two calls build identical weights: the tests rebuild a model to get
the torch reference for an artifact the CLI converted from the same factory.
"""
from __future__ import annotations

import torch
from torch import nn

IMAGE_SHAPE = (1, 3, 16, 16)


def tiny_cnn():
    """A 3×16×16 → 10-class CNN. The 16→16 3×3 conv has 2304 weights, above coremltools'
    2048-element threshold for weight quantization, so Core ML int8 has something to quantize."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    return model.eval(), torch.randn(*IMAGE_SHAPE)


def cnn32():
    """tiny_cnn with 32 channels: every weight's inner dimension divides int4's block of 32, so a CNN can
    take 4-bit weights where the format allows it (the registry-cell guard, tests/test_registry_cells.py)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))
    return model.eval(), torch.randn(*IMAGE_SHAPE)


def same_pad_cnn():
    """Like EfficientNet-Lite's stride-2 blocks: TF "same" padding as ZeroPad2d((0, 1, 0, 1)) before a
    stride-2 depthwise conv (and (1, 2, 1, 2) before a 5×5 one), after the three leading convs that
    static int8 keeps float."""
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU6(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU6(),
        nn.Conv2d(8, 8, 1), nn.Conv2d(8, 16, 1), nn.ReLU6(),
        nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(16, 16, 3, stride=2, groups=16), nn.ReLU6(),
        nn.Conv2d(16, 16, 1), nn.ReLU6(),
        nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(16, 16, 5, stride=2, groups=16), nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    return model.eval(), torch.randn(*IMAGE_SHAPE)


def tiny_mlp():
    """Linear layers only (family "generic"): int8 is dynamic and needs no calibration."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    return model.eval(), torch.randn(1, 8)


def mlp64():
    """Linear 64 → 64 → 32: every weight's input dim is a multiple of 32 (int4 blocks) and above the
    Core ML / weight-only size thresholds."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32))
    return model.eval(), torch.randn(1, 64)


class _Det(nn.Module):
    """torch.linalg.det: the ONNX exporter takes it; litert-torch and coremltools have no rule for it."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 4)

    def forward(self, x):
        return torch.linalg.det(self.proj(x)).reshape(1, -1)


def det_model():
    torch.manual_seed(2)
    return _Det().eval(), torch.randn(1, 4, 4)


# ---------------------------------------------------------------------------- digits (compression tests)

DIGITS_SHAPE = (1, 1, 8, 8)
DIGITS_TRAIN = 1200          # first 1200 digits: teacher training, distillation, calibration; the rest held out


def digits_data():
    """scikit-learn digits as float32 NCHW (1×8×8, pixels/16) and int labels: (x_train, y_train, x_test, y_test)."""
    import numpy as np
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(x))
    x, y = x[perm], y[perm]
    return x[:DIGITS_TRAIN], y[:DIGITS_TRAIN], x[DIGITS_TRAIN:], y[DIGITS_TRAIN:]


_DIGITS_TEACHER = {}


def digits_cnn():
    """A small CNN teacher trained on digits in a few seconds (seeded, cached per process)."""
    if "model" not in _DIGITS_TEACHER:
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))
        x, y, _, _ = digits_data()
        x, y = torch.from_numpy(x), torch.from_numpy(y)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)     # a tiny model: one thread is fastest, and kind to shared CPUs
        epochs, bs = 8, 32
        opt = torch.optim.Adam(model.parameters(), lr=5e-3)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=epochs * ((len(x) + bs - 1) // bs))
        g = torch.Generator().manual_seed(0)
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), bs):
                idx = perm[i:i + bs]
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        torch.set_num_threads(threads)
        _DIGITS_TEACHER["model"] = model.eval()
    import copy
    return copy.deepcopy(_DIGITS_TEACHER["model"]), torch.zeros(*DIGITS_SHAPE)


# ---------------------------------------------------------------- fp16 range / precision census (issue 12)

class _Loud(nn.Module):
    """`loud` outputs about 1.9e5 on the example (beyond fp16's 65504) while every weight fits fp16
    (≤ 3000); `head` brings the output back to a few hundred, so the final output alone looks harmless."""

    def __init__(self):
        super().__init__()
        self.loud = nn.Linear(64, 16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(torch.relu(self.loud(x)))


def fp16_overflow():
    torch.manual_seed(5)
    model = _Loud()
    with torch.no_grad():
        model.loud.weight.uniform_(1000.0, 3000.0)
        model.head.weight.mul_(1e-4)
    return model.eval(), torch.rand(1, 64) + 1.0


def two_conv_cnn():
    """Two small convs and no classifier layer: static int8 keeps the leading convs float (cnn_int8.py)
    and Core ML quantizes only tensors over 256 elements, so an "int8" export holds no int8 weight."""
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return model.eval(), torch.randn(*IMAGE_SHAPE)
