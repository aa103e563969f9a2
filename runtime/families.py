"""The model-family registry (in the spirit of Optimum's per-task configs), torch-free.

A **family** says what kind of model it is: the tasks that map to it, its IO signature, the
metric its artifacts are judged on, which quantization column of the format registry applies
(`kind`: a conv net gets static int8, a transformer dynamic int8 …), and which compression steps
fit it. A **metric** holds the validation tolerances per precision, how an accuracy drop is
defined, and how it is shown to people. The converter (`convert/`), the validator, the profiler
and the report read these entries instead of branching on names; the torch parts of a family
(building a module, its default data) live with its model source in `convert/`.

Adding a family: ARCHITECTURE.md, "Add a model family".
"""
from __future__ import annotations

from dataclasses import dataclass, field

# ---------------------------------------------------------------- metrics

Tolerance = dict   # stat -> (op, bound)


@dataclass(frozen=True)
class Metric:
    name: str
    drop_stat: str                  # the stat whose shortfall from 1 is the accuracy drop
    drop_definition: str
    tolerances: dict                # precision -> Tolerance
    label: str                      # for people: "top-1 agreement"
    classifier: bool = False        # outputs are class scores: top-1/top-5 stats, KL error proxy, cross-entropy
    mixed_samples: int = 128        # calibration samples the mixed-precision search measures on
    distill_loss: str = "mse"       # the distillation loss `loss = "auto"` picks
    neighbours: bool = False        # embeddings: nearest-neighbour agreement is reported after compression
    drop_is_increase: bool = False  # the drop is the stat itself (a relative perplexity increase), not 1 − stat
    guards: tuple[str, ...] = ("nan_count", "collapsed")   # the ALWAYS checks that apply to its stats

    def drop(self, stats: dict) -> float:
        """The one number a budget is judged on (1 when the comparison failed)."""
        if "error" in stats:
            return 1.0
        return stats[self.drop_stat] if self.drop_is_increase else 1.0 - stats[self.drop_stat]

    def show(self, stats: dict) -> str:
        if self.drop_is_increase:
            return f"ppl {stats['perplexity_change']:+.1%} / next-token {stats['top1_agreement']:.3f}"
        if self.classifier:
            return f"top1 {stats['top1_agreement']:.3f} / top5 {stats['top5_overlap']:.3f}"
        return f"cos {stats['cosine_mean']:.4f} (min {stats['cosine_min']:.4f})"


ALWAYS: Tolerance = {"nan_count": ("<=", 0), "collapsed": ("==", False)}

METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("top1", "top1_agreement", "1 − top-1 agreement with the fp32 reference's predictions",
           label="top-1 agreement", classifier=True, mixed_samples=320, distill_loss="kl",
           tolerances={"fp32": {"cosine_min": (">=", 0.9999), "top1_agreement": (">=", 1.0)},
                       "fp16": {"cosine_min": (">=", 0.999), "top1_agreement": (">=", 0.95)},
                       "int8": {"cosine_mean": (">=", 0.90), "top1_agreement": (">=", 0.75)},
                       "int8w": {"cosine_min": (">=", 0.99), "top1_agreement": (">=", 0.90)},
                       "int4": {"cosine_mean": (">=", 0.80), "top1_agreement": (">=", 0.50)}}),
    Metric("cosine", "cosine_mean", "1 − mean cosine similarity to the fp32 reference's embeddings",
           label="cosine", distill_loss="cosine", neighbours=True,
           tolerances={"fp32": {"cosine_min": (">=", 0.9999)},
                       "fp16": {"cosine_min": (">=", 0.999)},
                       "int8": {"cosine_min": (">=", 0.85), "cosine_mean": (">=", 0.93)},
                       "int8w": {"cosine_min": (">=", 0.99)},
                       "int4": {"cosine_min": (">=", 0.75), "cosine_mean": (">=", 0.85)}}),
    Metric("perplexity", "perplexity_change",
           "relative perplexity increase over the fp32 reference on held-out text (next-token top-1 agreement "
           "and KL divergence are reported beside it)",
           label="perplexity change", drop_is_increase=True, guards=("nan_count",),
           tolerances={"fp32": {"top1_agreement": (">=", 0.99), "perplexity_change": ("<=", 0.01)},
                       "fp16": {"top1_agreement": (">=", 0.97), "perplexity_change": ("<=", 0.03)},
                       "int8": {"top1_agreement": (">=", 0.85), "perplexity_change": ("<=", 0.15)},
                       "int8w": {"top1_agreement": (">=", 0.90), "perplexity_change": ("<=", 0.10)},
                       # 4-bit costs small models much (SmolLM2-135M: ONNX block-32 0.63 / +34 %, TFLite
                       # dynamic_int4_block32 0.58; published peers +39-44 %): the bound catches a broken
                       # conversion (agreement near 0, perplexity multiplied); the user's budget judges the rest
                       "int4": {"top1_agreement": (">=", 0.50), "perplexity_change": ("<=", 1.00)}}),
    Metric("max-abs", "cosine_mean", "1 − mean cosine similarity to the fp32 reference's outputs",
           label="cosine",
           tolerances={"fp32": {"cosine_min": (">=", 0.9999)},
                       "fp16": {"cosine_min": (">=", 0.999)},
                       "int8": {"cosine_min": (">=", 0.95)},
                       "int8w": {"cosine_min": (">=", 0.99)},
                       "int4": {"cosine_min": (">=", 0.85)}}),
)}


def metric(name: str) -> Metric:
    return METRICS[name]


def tolerance(metric_name: str, precision: str) -> Tolerance:
    m = METRICS[metric_name]
    return {**{k: ALWAYS[k] for k in m.guards}, **m.tolerances[precision]}


# ---------------------------------------------------------------- families

@dataclass(frozen=True)
class Family:
    name: str
    title: str
    kind: str                        # the capability column of the format registry: cnn | transformer | generic
    metric: str                      # default metric (a factory may name a classifier task: top1)
    tasks: tuple[str, ...]           # `--task` values (and built-ins' tasks) that map to this family
    io: str                          # the IO signature, for people and docs
    prune: str | None = None         # which `prune` mode fits: "channels" (conv nets) | "heads-ffn" (encoders)
    layer_drop: bool = False         # `drop_layers` applies (Hugging Face encoders)
    token_states: bool = False       # distillation may match per-token hidden states
    generative: bool = False         # artifacts generate text: `runtime.load` gives a runtime.lm.LanguageModel
    notes: tuple[str, ...] = field(default_factory=tuple)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("image-classifier", "image classifier", kind="cnn", metric="top1", tasks=("image-classification",),
           io="pixels [1, 3, H, W] float32 (NCHW in torch; NHWC in TFLite) → logits [1, classes]",
           prune="channels"),
    Family("text-embedding", "text encoder (embeddings)", kind="transformer", metric="cosine",
           tasks=("sentence-embedding", "feature-extraction"),
           io="input_ids, attention_mask [1, seq] int64 → sentence embedding [1, dim] (or per-token states)",
           prune="heads-ffn", layer_drop=True, token_states=True),
    Family("text-classifier", "text classifier", kind="transformer", metric="top1", tasks=("text-classification",),
           io="input_ids, attention_mask [1, seq] int64 → logits [1, classes]", prune="heads-ffn", layer_drop=True),
    Family("conv-net", "convolutional network (factory)", kind="cnn", metric="max-abs", tasks=(),
           io="the factory's example tensors → its outputs", prune="channels"),
    Family("generic", "generic tensor model (factory)", kind="generic", metric="max-abs", tasks=("generic",),
           io="the factory's example tensors → its outputs"),
    Family("causal-lm", "causal language model (text generation)", kind="lm-decoder", metric="perplexity",
           tasks=("text-generation",), generative=True,
           io="input_ids / attention_mask / position_ids [1, seq] int64 + per-layer KV cache "
              "[1, kv_heads, past, head_dim] in and out → logits [1, seq, vocab] float32",
           notes=("fp32 reference = the source weights (a GGUF's de-quantized to fp32; source.reference says so)",
                  "tokenizer.json only (never tokenizer.model); chat template rendered in a sandbox")),
)}

TASKS = {task: f.name for f in FAMILIES.values() for task in f.tasks}


def family(name: str) -> Family:
    return FAMILIES[name]


def for_task(task: str) -> Family | None:
    name = TASKS.get(task)
    return FAMILIES[name] if name else None
