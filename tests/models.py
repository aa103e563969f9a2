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


def tiny_mlp():
    """Linear layers only (family "generic"): int8 is dynamic and needs no calibration."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    return model.eval(), torch.randn(1, 8)


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
