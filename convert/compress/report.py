"""What a compression step changed: params, MACs (Torch-Pruning's counter), accuracy vs the original model."""
from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from pocketml.runtime.errors import ValidationFailed
from pocketml.runtime.families import metric


@dataclass
class Context:
    """Shared by the steps of one recipe. `teacher` is the spec before the first step (never modified)."""
    teacher: object                         # ModelSpec
    calib: object | None = None             # DataSet: --calib data, else the model's own calibration set
    out_dir: Path | None = None
    log: object = print
    eval_samples: list = field(default_factory=list)
    teacher_eval: list = field(default_factory=list)   # teacher outputs (first output) on eval_samples
    notes: list = field(default_factory=list)          # what the running step wants reported

    @classmethod
    def build(cls, teacher, calib, out_dir, log):
        ds = teacher.eval or calib or teacher.calib
        samples = ds.samples[:256] if ds else [teacher.example()]
        ctx = cls(teacher, calib, Path(out_dir) if out_dir else None, log, samples)
        ctx.teacher_eval = forward_all(teacher.module, samples)
        return ctx


def to_torch(sample):
    import torch
    return tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in sample)


def first(y):
    return y[0] if isinstance(y, (tuple, list)) else y


def forward_all(module, samples) -> list[np.ndarray]:
    import torch
    was = module.training
    module.eval()
    with torch.no_grad():
        outs = [first(module(*to_torch(s))).detach().float().numpy() for s in samples]
    module.train(was)
    return outs


def count(module, example) -> tuple[int, int]:
    """(MACs, params) of one forward pass on `example`: multiply-accumulates of every Conv*/Linear call,
    counted with forward hooks (so subclasses with their own forward, e.g. "same"-padding convs, count
    too), plus the attention products of transformer layers (batch matmuls are not modules: for
    BERT-like encoders 2·seq²·hidden per layer, from the module's config)."""
    import torch
    from torch import nn

    macs = [0]

    def conv(m, inp, out):
        k = int(np.prod(m.kernel_size)) * (m.in_channels // m.groups)
        macs[0] += out.numel() * k

    def linear(m, inp, out):
        macs[0] += out.numel() * m.in_features

    run_with_hooks(module, example, lambda m, i, o: (conv if isinstance(m, nn.modules.conv._ConvNd) else linear)(m, i, o),
                   (nn.modules.conv._ConvNd, nn.Linear))
    macs[0] += attention_macs(module, example)
    return int(macs[0]), int(sum(p.numel() for p in module.parameters()))


def run_with_hooks(module, example, hook, types) -> None:
    """One eval-mode forward pass on `example` with `hook` on every submodule of `types`; the hooks are
    removed and the module's mode restored afterwards."""
    import torch
    hooks = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, types)]
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(*example)
    finally:
        for h in hooks:
            h.remove()
        module.train(was)


def attention_macs(module, example) -> int:
    cfg = getattr(getattr(module, "model", None), "config", None)
    if cfg is None or not hasattr(cfg, "num_hidden_layers") or not example or example[0].ndim != 2:
        return 0
    seq = int(example[0].shape[1])
    return int(example[0].shape[0]) * cfg.num_hidden_layers * 2 * seq * seq * cfg.hidden_size


def agreement(spec, teacher_outs, student_outs) -> tuple[str, float]:
    """top1 → top-1 agreement; otherwise mean cosine (per sample, flattened)."""
    if metric(spec.metric).classifier:
        a = np.mean([int(np.argmax(t.reshape(-1)) == np.argmax(s.reshape(-1)))
                     for t, s in zip(teacher_outs, student_outs)])
        return "top1_agreement", float(a)
    cos = []
    for t, s in zip(teacher_outs, student_outs):
        t, s = t.reshape(-1).astype(np.float64), s.reshape(-1).astype(np.float64)
        cos.append(float(t @ s / max(np.linalg.norm(t) * np.linalg.norm(s), 1e-12)))
    return "mean_cosine", float(np.mean(cos))


def neighbour_agreement(teacher_outs, student_outs) -> float | None:
    """Embeddings: share of samples whose nearest other sample (cosine) is the same for student and
    teacher — does retrieval still find the same neighbour? None for fewer than 3 samples."""
    if len(teacher_outs) < 3:
        return None

    def nearest(outs):
        x = np.stack([o.reshape(-1) for o in outs]).astype(np.float64)
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(1)
    return float(np.mean(nearest(teacher_outs) == nearest(student_outs)))


def check_signature(teacher_outs, student_outs, step: str) -> None:
    ts, ss = [t.shape for t in teacher_outs[:1]], [s.shape for s in student_outs[:1]]
    if ts != ss:
        raise ValidationFailed(f"after step {step!r} the student's output shape {ss[0]} differs from the "
                               f"teacher's {ts[0]}: a compressed model must keep the output signature",
                               teacher=list(ts[0]), student=list(ss[0]))


def state_digest(module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(np.ascontiguousarray(v.detach().cpu().float().numpy()).tobytes())
    return h.hexdigest()


def contiguous(module) -> None:
    """Pruning leaves odd strides (also on size-1 dims, which is_contiguous() ignores); Core ML's exporter
    rejects them ("non-contiguous dim order"). Give every tensor fresh row-major storage."""
    import torch
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            fresh = torch.empty(tuple(t.shape), dtype=t.dtype, device=t.device)
            fresh.copy_(t.data)
            t.data = fresh


def clone(spec):
    """A new ModelSpec with its own copy of the module (data sets shared: they are read-only)."""
    return replace(spec, module=copy.deepcopy(spec.module), source=dict(spec.source))


def run_step(step, spec, ctx: Context):
    """Run one step on a copy, measure it, append its report to source["compression"]."""
    from .recipe import config_dict
    t0 = time.perf_counter()
    example = spec.torch_example()
    macs0, params0 = count(spec.module, example)
    stat, before = agreement(spec, ctx.teacher_eval, forward_all(spec.module, ctx.eval_samples))
    ctx.notes = []
    student = step.run(spec, ctx)               # a NEW spec; the input module is never mutated
    assert student is not spec and student.module is not spec.module, f"step {step.kind} mutated its input"
    notes = list(ctx.notes)
    contiguous(student.module)
    student.module.eval()
    outs = forward_all(student.module, ctx.eval_samples)
    check_signature(ctx.teacher_eval, outs, step.kind)
    _, after = agreement(spec, ctx.teacher_eval, outs)
    macs1, params1 = count(student.module, example)
    rep = {"step": step.kind, "config": config_dict(step.cfg), "params": [params0, params1], "macs": [macs0, macs1],
           "metric": stat, "vs": "original model", "data": f"{len(ctx.eval_samples)} evaluation samples",
           "before": round(before, 6), "after": round(after, 6), "seconds": round(time.perf_counter() - t0, 2),
           "notes": list(notes)}
    if metric(spec.metric).neighbours:
        rep["neighbour_agreement"] = neighbour_agreement(ctx.teacher_eval, outs)
    src = dict(spec.source)
    src["compression"] = list(spec.source.get("compression", [])) + [rep]
    src.setdefault("original_sha256", spec.source.get("sha256"))
    src["sha256"] = state_digest(student.module)   # a different student is a different artifact (reuse key)
    student = replace(student, source=src)
    ctx.log(f"  {step.kind:<10} params {params0:,} → {params1:,} ({params1 / params0:.0%}), "
            f"MACs {macs0:,} → {macs1:,} ({macs1 / max(macs0, 1):.0%}), "
            f"{stat} vs original {before:.4f} → {after:.4f}"
            + (f", nearest-neighbour agreement {rep['neighbour_agreement']:.3f}"
               if rep.get("neighbour_agreement") is not None else "") + f"  [{rep['seconds']:.1f}s]")
    for n in notes:
        ctx.log(f"             note: {n}")
    return student
