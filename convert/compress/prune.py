"""Structured pruning with Torch-Pruning (its dependency graph; no hand-written dependency analysis).

CNNs: conv channels (`channels`), the final classifier layer ignored, uniform or global.
Transformers (family "transformer", Hugging Face BERT-like): FFN neurons (`ffn`) and attention heads
(`heads`), hidden size untouched so the output signature stays the same.
"""
from __future__ import annotations

import numpy as np

from pocketml.runtime.errors import UsageError
from pocketml.runtime.families import family, metric

from .recipe import PruneConfig
from .report import Context, clone, first, to_torch


def importance(name: str):
    import torch_pruning as tp
    return {"l1": lambda: tp.importance.MagnitudeImportance(p=1),
            "l2": lambda: tp.importance.MagnitudeImportance(p=2),
            "taylor": lambda: tp.importance.TaylorImportance(),
            "random": lambda: tp.importance.RandomImportance()}[name]()


def last_layer(module, example):
    """The last Conv/Linear executed in a forward pass: the classifier (or output projection)."""
    from torch import nn

    from .report import run_with_hooks
    order = []
    run_with_hooks(module, example, lambda m, i, o: order.append(m), (nn.Conv2d, nn.Conv1d, nn.Linear))
    return order[-1] if order else None


def taylor_gradients(module, spec, ctx: Context, example) -> None:
    """Taylor importance needs gradients: cross-entropy against the teacher's top-1 (classifiers), else Σ output."""
    import torch
    samples = (ctx.calib.samples if ctx.calib else [])[:64] or [[x.numpy() for x in example]]
    batch = [torch.cat(t) for t in zip(*[to_torch(s) for s in samples])]
    module.zero_grad()
    out = first(module(*batch))
    if metric(spec.metric).classifier:
        with torch.no_grad():
            target = first(ctx.teacher.module(*batch)).argmax(-1)
        loss = torch.nn.functional.cross_entropy(out.reshape(out.shape[0], -1), target.reshape(-1))
    else:
        loss = out.float().pow(2).sum() if out.ndim > 2 else out.float().sum()
    loss.backward()


class Prune:
    kind = "prune"

    def __init__(self, cfg: PruneConfig):
        self.cfg = cfg

    def run(self, spec, ctx: Context):
        import torch
        student = clone(spec)
        torch.manual_seed(self.cfg.seed)
        np.random.seed(self.cfg.seed)
        if family(spec.family).prune == "heads-ffn":
            if self.cfg.channels is not None:
                raise UsageError("prune channels= is for CNNs; for transformers use heads= and/or ffn=", field="channels")
            self._transformer(student, ctx)
        else:
            if self.cfg.heads is not None or self.cfg.ffn is not None:
                raise UsageError(f"prune heads=/ffn= are for transformers; {spec.name} is a {spec.family} model: "
                                 "use channels=", field="heads" if self.cfg.heads is not None else "ffn")
            self._cnn(student, ctx)
        return student

    # ------------------------------------------------------------------ CNN channels
    def _cnn(self, spec, ctx):
        import torch_pruning as tp
        from torch import nn
        model, ratio = spec.module, self.cfg.channels
        example = spec.torch_example()
        head = last_layer(model, example)
        ignored = [head] if head is not None else []
        names = {m: n for n, m in model.named_modules()}
        if not self.cfg.global_pruning:
            for m in model.modules():
                if isinstance(m, nn.Conv2d) and m not in ignored and m.groups == 1:
                    if int(m.out_channels * (1 - ratio)) < 1:
                        raise UsageError(f"prune channels={ratio} would empty layer {names[m]!r} "
                                         f"({m.out_channels} channel(s)); use a smaller ratio", layer=names[m])
        imp = importance(self.cfg.importance)
        if self.cfg.importance == "taylor":
            taylor_gradients(model, spec, ctx, example)
        pruner = tp.pruner.MetaPruner(model, example, importance=imp, pruning_ratio=ratio,
                                      global_pruning=self.cfg.global_pruning,
                                      max_pruning_ratio=max(ratio, 0.9) if self.cfg.global_pruning else 1.0,
                                      ignored_layers=ignored)
        pruner.step()
        model.zero_grad(set_to_none=True)
        for n, m in model.named_modules():
            if isinstance(m, nn.Conv2d) and m.out_channels < 1 or isinstance(m, nn.Linear) and m.out_features < 1:
                raise UsageError(f"prune channels={ratio} emptied layer {n!r}; use a smaller ratio", layer=n)
        ctx.notes.append(f"ignored (kept whole): {names.get(head, 'none')}; "
                         f"{'global' if self.cfg.global_pruning else 'uniform'} {self.cfg.importance} importance")
        spec.module = model.eval()

    # ------------------------------------------------------------------ transformer heads / FFN
    def _transformer(self, spec, ctx):
        import torch_pruning as tp
        from torch import nn
        model = spec.module
        hf = getattr(model, "model", model)
        example = spec.torch_example()
        attn = [m for m in hf.modules() if all(hasattr(m, a) for a in ("query", "key", "value", "num_attention_heads"))]
        ffn_in = [m.dense for n, m in hf.named_modules() if n.endswith(".intermediate") and hasattr(m, "dense")]
        if not attn and not ffn_in:
            raise UsageError(f"{spec.name}: no BERT-like attention/FFN blocks found to prune", model=spec.name)
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if self.cfg.ffn:
            for m in ffn_in:
                if int(m.out_features * (1 - self.cfg.ffn)) < 1:
                    raise UsageError(f"prune ffn={self.cfg.ffn} would empty an FFN of {m.out_features} neurons")
            if self.cfg.importance == "taylor":
                taylor_gradients(model, spec, ctx, example)
            pruner = tp.pruner.MetaPruner(model, example, importance=importance(self.cfg.importance),
                                          pruning_ratio=self.cfg.ffn, global_pruning=self.cfg.global_pruning,
                                          ignored_layers=[m for m in linears if m not in ffn_in])
            pruner.step()
            model.zero_grad(set_to_none=True)
            sizes = sorted({m.out_features for m in ffn_in})
            ctx.notes.append(f"FFN neurons: {self.cfg.ffn:.0%} removed, intermediate size now {sizes}")
        if self.cfg.heads:
            qkv = [lin for a in attn for lin in (a.query, a.key, a.value)]
            heads0 = [a.num_attention_heads for a in attn]
            if any(int(h * (1 - self.cfg.heads)) < 1 for h in heads0):
                raise UsageError(f"prune heads={self.cfg.heads} would remove every head of a layer with {min(heads0)} heads")
            if self.cfg.importance == "taylor":
                taylor_gradients(model, spec, ctx, example)
            pruner = tp.pruner.MetaPruner(
                # pruning_ratio must be > 0 for Torch-Pruning to visit the q/k/v groups; with
                # prune_head_dims=False and every other layer ignored it removes whole heads only.
                model, example, importance=importance(self.cfg.importance), pruning_ratio=self.cfg.heads,
                global_pruning=self.cfg.global_pruning, ignored_layers=[m for m in linears if m not in qkv],
                num_heads={lin: a.num_attention_heads for a in attn for lin in (a.query, a.key, a.value)},
                prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=self.cfg.heads)
            pruner.step()
            model.zero_grad(set_to_none=True)
            for a in attn:
                a.num_attention_heads = pruner.num_heads[a.query]
                a.all_head_size = a.query.out_features
                a.attention_head_size = a.all_head_size // a.num_attention_heads
            ctx.notes.append(f"attention heads per layer {heads0} → {[a.num_attention_heads for a in attn]}")
        hf_cfg = getattr(hf, "config", None)
        if hf_cfg is not None and ffn_in:
            hf_cfg.intermediate_size = ffn_in[0].out_features    # uniform pruning: all layers alike
        if self.cfg.heads:
            ctx.notes.append("config.json keeps the original head count: export the pruned module; "
                             "save_pretrained of a head-pruned model does not round-trip")
        spec.module = model.eval()
