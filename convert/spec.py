"""ModelSpec: everything the exporters, validators and the manifest need to know about a model."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

Sample = list[np.ndarray]   # one sample: one array per model input, canonical layout, batch 1


@dataclass
class DataSet:
    samples: list[Sample]
    source: str                     # human description: where the data came from

    def __len__(self):
        return len(self.samples)

    def spread(self, n: int) -> "DataSet":
        """At most n samples, evenly spaced over the set (not the first n: those are one photo's views)."""
        if len(self.samples) <= n:
            return self
        pick = np.unique(np.linspace(0, len(self.samples) - 1, n).astype(int))
        return DataSet([self.samples[i] for i in pick], f"{len(pick)} of {self.source}")


@dataclass
class ModelSpec:
    name: str
    module: object                  # torch.nn.Module in eval mode, fp32
    inputs: list[dict]              # [{name, shape, dtype, layout}] canonical (torch) layout, batch 1
    outputs: list[str]
    task: str                       # image-classification | sentence-embedding | feature-extraction | generic
    metric: str                     # top1 | cosine | max-abs
    family: str                     # a family of runtime/families.py (image-classifier, text-embedding, …)
    preprocessing: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)       # {kind, id, sha256, trust_remote_code}
    calib: DataSet | None = None
    eval: DataSet | None = None
    train: object = None            # built-in models: () -> DataSet of unlabelled distillation data (lazy)
    labels: list[str] | None = None
    tokenizer_file: Path | None = None
    hf_dir: Path | None = None

    def example(self) -> Sample:
        """The first evaluation/calibration sample, else zeros/ones of the declared shape."""
        for ds in (self.eval, self.calib):
            if ds and ds.samples:
                return ds.samples[0]
        return [np.ones([d if isinstance(d, int) else 1 for d in s["shape"]], dtype=s["dtype"])
                for s in self.inputs]

    def torch_example(self):
        import torch
        # np.array(copy) gives standard strides: a[None] keeps a zero stride that some converters reject
        return tuple(torch.from_numpy(np.array(x, order="C", copy=True)) for x in self.example())

    @property
    def kind(self) -> str:
        """The family's capability column in the format registry (cnn | transformer | generic)."""
        from pocketml.runtime.families import family
        return family(self.family).kind

    @property
    def is_image(self) -> bool:
        return self.preprocessing.get("kind") == "image"
