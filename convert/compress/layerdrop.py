"""Drop encoder layers of a Hugging Face encoder: keep = [0, 2, 4]. The result save/load round-trips."""
from __future__ import annotations

from pocketml.runtime.errors import UsageError

from .recipe import LayerDropConfig
from .report import Context, clone


def encoder_layers(hf):
    """(parent module, attribute name) of the encoder's layer ModuleList (BERT: encoder.layer)."""
    from torch import nn
    for path in ("encoder.layer", "encoder.layers", "transformer.layer", "layers", "layer"):
        *parents, attr = path.split(".")
        owner = hf
        for part in parents:
            owner = getattr(owner, part, None)
        if owner is not None and isinstance(getattr(owner, attr, None), nn.ModuleList):
            return owner, attr
    return None, None


class LayerDrop:
    kind = "layer_drop"

    def __init__(self, cfg: LayerDropConfig):
        self.cfg = cfg

    def run(self, spec, ctx: Context):
        from torch import nn
        hf = getattr(spec.module, "model", None)
        cfg = getattr(hf, "config", None)
        if hf is None or cfg is None:
            raise UsageError(f"layer_drop needs a Hugging Face encoder; {spec.name} is a {spec.family} model",
                             model=spec.name)
        owner, attr = encoder_layers(hf)
        if owner is None:
            raise UsageError(f"{spec.name}: found no encoder layer list (encoder.layer) to drop layers from")
        n = len(getattr(owner, attr))
        bad = [i for i in self.cfg.keep if not 0 <= i < n]
        if bad:
            raise UsageError(f"layer_drop keep: layer(s) {bad} do not exist; {spec.name} has layers 0..{n - 1}",
                             layers=bad)
        student = clone(spec)
        hf = student.module.model
        owner, attr = encoder_layers(hf)
        old = getattr(owner, attr)
        keep = sorted(self.cfg.keep)
        layers = nn.ModuleList([old[i] for i in keep])
        for new_idx, layer in enumerate(layers):
            for m in layer.modules():
                if hasattr(m, "layer_idx"):
                    m.layer_idx = new_idx
        setattr(owner, attr, layers)
        hf.config.num_hidden_layers = len(keep)
        ctx.notes.append(f"layers {n} → {len(keep)} (kept {keep}); config.num_hidden_layers = {len(keep)}")
        student.module.eval()
        return student
