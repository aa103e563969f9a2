"""Static int8 recipe for CNNs, shared by the ONNX and TFLite exporters.

Measured on EfficientNet-Lite0 (docs/PERFORMANCE.md): plain min-max PTQ gave top-1 agreement 0.82 (ONNX)
and 0.41 (TFLite). What fixed it, each step measured:
- bias correction (Nagel et al. 2019): int8 rounding of depthwise weights shifts channel means;
  subtract the mean shift measured on the calibration data;
- the first three convs (stem, first depthwise, first projection) stay float — a float *prefix*,
  never a float layer mid-graph (ORT re-quantizes those per-tensor at load time);
- TFLite: conv → ReLU6 (hardtanh) annotated as one partition (litert-torch only pairs conv → relu and
  otherwise gives ReLU6 the conv's pre-activation range), BatchNorm folded, symmetric explicit pads
  moved into the conv (removes PAD + 2 TRANSPOSE per block), weight observer eps 1e-12, every residual
  add annotated (litert's annotator left the adds of the 80/112/192-channel stages as DQ → float ADD → Q),
  a min-max range for the classifier's logits (a clipped range turns the top logits into ties; 0.950 →
  0.953 top-1 agreement), the percentile observer as in ONNX (0.947 → 0.968 with one-thread calibration);
  the asymmetric "same" pads are folded after conversion (tflite_graph.py).
"""
from __future__ import annotations

import dataclasses

import numpy as np

FLOAT_LEADING_CONVS = 3   # stem conv + first depthwise + first projection stay float

# ---------------------------------------------------------------- ONNX side
def onnx_leading_convs(model, n=FLOAT_LEADING_CONVS):
    """Names of the first n Conv nodes on the single-consumer chain starting at the graph input.
    Keeping a *prefix* float matters: a float Conv fed by a DequantizeLinear gets its weights
    re-quantized per-tensor by ORT's WeightBiasQuantization graph optimizer at session load."""
    consumers = {}
    for node in model.graph.node:
        for i in node.input: consumers.setdefault(i, []).append(node)
    inits = {i.name for i in model.graph.initializer}
    t = [i.name for i in model.graph.input if i.name not in inits][0]
    names = []
    while len(names) < n and len(consumers.get(t, [])) == 1:
        node = consumers[t][0]
        if node.op_type == "Conv": names.append(node.name)
        elif node.op_type not in ("Clip", "Relu", "Pad"): break
        t = node.output[0]
    return names

def _wq(w):
    """ORT int8 per-channel symmetric weights: scale = absmax/127, range [-127, 127]."""
    wf = w.reshape(w.shape[0], -1).astype(np.float64)
    s = np.abs(wf).max(1, keepdims=True) / 127; s[s == 0] = 1
    return (np.clip(np.round(wf / s), -127, 127) * s).reshape(w.shape)

def onnx_bias_correct(src, dst, samples, input_name, skip=()):
    """Bias correction (Nagel et al. 2019): b -= (Wq - W) . E[x] so int8 weight rounding adds no mean shift."""
    import onnx, onnxruntime as ort
    from onnx import helper, numpy_helper
    m = onnx.load(src)
    nodes = [n for n in m.graph.node if n.op_type in ("Conv", "Gemm") and n.name not in skip]
    probe = onnx.ModelProto(); probe.CopyFrom(m)
    for name in dict.fromkeys(n.input[0] for n in nodes):
        probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = [o.name for o in sess.get_outputs()]
    mean = {}
    for x in samples:
        for k, v in zip(outs, sess.run(None, {input_name: x})):
            mean[k] = mean.get(k, 0) + v.astype(np.float64).mean(axis=(0, 2, 3) if v.ndim == 4 else 0) / len(samples)
    inits = {i.name: i for i in m.graph.initializer}
    for n in nodes:
        w = numpy_helper.to_array(inits[n.input[1]]); dw = _wq(w) - w; ex = mean[n.input[0]]
        if n.op_type == "Gemm":
            tb = [a.i for a in n.attribute if a.name == "transB"]
            delta = (dw if tb and tb[0] else dw.T) @ ex
        else:
            g = ([a.i for a in n.attribute if a.name == "group"] or [1])[0]
            O, ig = w.shape[:2]
            delta = np.einsum("goi,gi->go", dw.sum((2, 3)).reshape(g, O // g, ig), ex.reshape(g, ig)).reshape(O)
        if len(n.input) > 2 and n.input[2]:
            b = numpy_helper.to_array(inits[n.input[2]])
            inits[n.input[2]].CopyFrom(numpy_helper.from_array((b - delta).astype(b.dtype), n.input[2]))
        else:
            name = n.name + "_bias_corr"
            m.graph.initializer.append(numpy_helper.from_array((-delta).astype(np.float32), name))
            n.input.append(name)
    onnx.save(m, dst)

# ---------------------------------------------------------------- torch / TFLite side
def torch_prepare(module, samples, float_leading=FLOAT_LEADING_CONVS):
    """Copy of `module` with BatchNorm folded into convs, symmetric explicit padding moved into the
    conv, and bias correction for int8 per-channel weights (not for the first `float_leading` convs)."""
    import copy, torch, torch.nn as nn, torch.nn.functional as F
    m = copy.deepcopy(module).eval()
    calls = []
    hooks = [x.register_forward_hook(lambda mod, i, o: calls.append((mod, i[0], o)))
             for x in m.modules() if isinstance(x, (nn.Conv2d, nn.BatchNorm2d, nn.Linear))]
    with torch.no_grad(): m(torch.as_tensor(samples[0]))
    for h in hooks: h.remove()
    parents = {id(c): (p, n) for p in m.modules() for n, c in p.named_children()}
    for (conv, _, y), (bn, x, _) in zip(calls, calls[1:]):          # conv -> bn  ==>  conv'
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and x is y:
            s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            with torch.no_grad():
                conv.weight.mul_(s.reshape(-1, 1, 1, 1))
                b = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                conv.bias = nn.Parameter((b - bn.running_mean) * s + bn.bias)
            p, n = parents[id(bn)]; setattr(p, n, nn.Identity())
    for x in m.modules():                                            # ZeroPad2d(p,p,p,p) -> conv padding=p
        pad = getattr(x, "static_padding", None)
        if isinstance(x, nn.Conv2d) and isinstance(pad, nn.ZeroPad2d):
            l, r, t, b = pad.padding
            if l == r and t == b: x.padding, x.static_padding = (t, l), nn.Identity()
    layers = list(dict.fromkeys(c for c, _, _ in calls if isinstance(c, (nn.Conv2d, nn.Linear))))
    layers = layers[float_leading:]
    acc = {}
    def hook(mod, inp, out):
        x = inp[0]
        wf = mod.weight.reshape(mod.weight.shape[0], -1)
        sc = (wf.abs().amax(1, keepdim=True) / 127).clamp_min(1e-30)
        dw = (torch.clamp(torch.round(wf / sc), -127, 127) * sc - wf).reshape(mod.weight.shape)
        if isinstance(mod, nn.Linear): d = F.linear(x, dw).mean(0)
        else:
            if hasattr(mod, "static_padding"): x = mod.static_padding(x)
            d = F.conv2d(x, dw, None, mod.stride, mod.padding, mod.dilation, mod.groups).mean((0, 2, 3))
        acc[mod] = acc.get(mod, 0) + d.double() / len(samples)
    hooks = [x.register_forward_hook(hook) for x in layers]
    with torch.no_grad():
        for s in samples: m(torch.as_tensor(s))
    for h in hooks: h.remove()
    with torch.no_grad():
        for x in layers:
            if x.bias is None: x.bias = nn.Parameter(-acc[x].float())
            else: x.bias.sub_(acc[x].float())
    return m

def percentile_observer(percentile: float = 99.999):
    """A PT2E HistogramObserver whose range covers `percentile` % of the observed values (half the rest cut
    at each end) instead of minimising the L2 error: ONNX's default, available to TFLite as --observer."""
    import torch
    from torchao.quantization.pt2e.observer import HistogramObserver

    class PercentileObserver(HistogramObserver):
        def _non_linear_param_search(self):
            cdf = torch.cumsum(self.histogram, 0) / self.histogram.sum().clamp(min=1)
            tail = (1 - percentile / 100) / 2
            lo = int(torch.searchsorted(cdf, torch.tensor(tail, dtype=cdf.dtype)))
            hi = int(torch.searchsorted(cdf, torch.tensor(1 - tail, dtype=cdf.dtype)))
            width = (self.max_val - self.min_val) / self.bins
            return self.min_val + lo * width, self.min_val + (min(hi, self.bins - 1) + 1) * width

    return PercentileObserver


def activation_observer(name: str):
    """--observer name → PT2E observer constructor for activations (exporters.OBSERVERS["tflite"])."""
    from torchao.quantization.pt2e.observer import HistogramObserver, MinMaxObserver
    return {"histogram": HistogramObserver, "minmax": MinMaxObserver, "percentile": percentile_observer()}[name]


def make_pt2e_quantizer(float_leading=FLOAT_LEADING_CONVS, observer: str = "percentile", qat: bool = False):
    import torch
    from torch.fx import Node
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize
    from torchao.quantization.pt2e.observer import PerChannelMinMaxObserver
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, QuantizationSpec
    from litert_torch.quantize import pt2e_quantizer as P
    from litert_torch.quantize.pt2e_quantizer_utils import (QuantizationConfig, get_bias_qspec,
        get_input_act_qspec, get_output_act_qspec, get_weight_qspec)
    conv_ops = (torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default)
    act_ops = (torch.ops.aten.hardtanh.default, torch.ops.aten.hardtanh_.default,
               torch.ops.aten.relu.default, torch.ops.aten.relu_.default)

    class Quantizer(P.PT2EQuantizer):
        """conv -> hardtanh(ReLU6) is one partition (litert only fuses conv -> relu, and otherwise
        propagates the conv's pre-activation qparams to the ReLU6); first convs stay float."""
        def annotate(self, model):
            cfg = self.global_config
            convs = [n for n in model.graph.nodes if n.op == "call_function" and n.target in conv_ops]
            for conv in convs[:float_leading]:
                for n in [conv, *conv.args[1:3], *[u for u in conv.users if u.target in act_ops]]:
                    if isinstance(n, Node): n.meta["quantization_annotation"] = QuantizationAnnotation(_annotated=True)
            for lin in model.graph.nodes:      # logits: a min-max range, so the top logits are never clipped
                if (lin.op == "call_function" and lin.target == torch.ops.aten.linear.default   # into a tie
                        and any(u.op == "output" for u in lin.users)):
                    qmap = {lin.args[0]: get_input_act_qspec(cfg), lin.args[1]: get_weight_qspec(cfg)}
                    if len(lin.args) > 2 and isinstance(lin.args[2], Node): qmap[lin.args[2]] = get_bias_qspec(cfg)
                    lin.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map=qmap, output_qspec=logits, _annotated=True)
            for act in model.graph.nodes:
                conv = act.args[0] if act.op == "call_function" and act.target in act_ops else None
                if (not isinstance(conv, Node) or conv.target not in conv_ops or len(conv.users) != 1
                        or "quantization_annotation" in conv.meta):
                    continue
                qmap = {conv.args[0]: get_input_act_qspec(cfg), conv.args[1]: get_weight_qspec(cfg)}
                if len(conv.args) > 2 and isinstance(conv.args[2], Node): qmap[conv.args[2]] = get_bias_qspec(cfg)
                conv.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map=qmap, _annotated=True)
                act.meta["quantization_annotation"] = QuantizationAnnotation(
                    output_qspec=get_output_act_qspec(cfg), _annotated=True)
            model = super().annotate(model)
            for add in model.graph.nodes:     # residual adds litert's "add" annotator missed: int8 ADD, not
                if (add.op == "call_function" and add.target == torch.ops.aten.add.Tensor   # DQ→ADD→Q in float
                        and "quantization_annotation" not in add.meta):
                    add.meta["quantization_annotation"] = QuantizationAnnotation(
                        input_qspec_map={a: get_input_act_qspec(cfg) for a in add.args[:2] if isinstance(a, Node)},
                        output_qspec=get_output_act_qspec(cfg), _annotated=True)
            return model

    def ctr(obs):      # quantization-aware training: the same observers, inside a fake quantizer
        return FakeQuantize.with_args(observer=obs) if qat else obs

    cfg = P.get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    act = dataclasses.replace(cfg.input_activation,
                              observer_or_fake_quant_ctr=ctr(activation_observer(observer).with_args(eps=2**-12)))
    logits = dataclasses.replace(act, observer_or_fake_quant_ctr=ctr(activation_observer("minmax").with_args(eps=2**-12)))
    w = cfg.weight   # default weight observer eps=2**-12 floors 900+ channel scales; bias correction assumes none
    cfg = QuantizationConfig(act, act,
                             QuantizationSpec(dtype=w.dtype, quant_min=w.quant_min, quant_max=w.quant_max,
                                              qscheme=w.qscheme, ch_axis=w.ch_axis, is_dynamic=False,
                                              observer_or_fake_quant_ctr=ctr(PerChannelMinMaxObserver.with_args(eps=1e-12))),
                             cfg.bias, cfg.fixed_qparams, cfg.is_qat, cfg.is_dynamic)
    return Quantizer().set_global(cfg)
