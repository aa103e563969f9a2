"""Compression recipes as data: one typed config dataclass per step kind, parsed from TOML or CLI shorthands.

A step is parsed once, where it enters (a TOML file, a CLI shorthand, a dict handed to the API), into a
`Step` (kind + typed config); everything after reads the typed config. Torch-free: the CLI validates a
recipe (unknown kind/field → UsageError, exit 2) before loading any model.
"""
from __future__ import annotations

import tomllib
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from pocketml.runtime.errors import UsageError
from pocketml.runtime.formats import FORMAT_NAMES


@dataclass
class PruneConfig:
    """Structured pruning with Torch-Pruning. CNNs: `channels`; transformers: `heads` and/or `ffn`."""
    channels: float | None = None         # fraction of conv channels removed, in [0, 1)
    heads: float | None = None            # fraction of attention heads removed per layer (transformers)
    ffn: float | None = None              # fraction of FFN (intermediate) neurons removed (transformers)
    importance: str = "l1"                # l1 | l2 | taylor | random
    global_pruning: bool = False          # TOML/CLI key: `global`
    seed: int = 0


@dataclass
class LayerDropConfig:
    """Keep only these encoder layers (Hugging Face encoders)."""
    keep: list[int] = field(default_factory=list)


@dataclass
class DistillConfig:
    """Train the student against the original model (the teacher) on unlabelled data."""
    data: str | None = None               # directory (images/.npy/.npz/.txt); default: the calibration set
    labels: str | None = None             # optional .npy/.txt of integer labels, one per sample in data order
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    temperature: float = 2.0              # classifiers: KL on softened logits
    alpha: float = 0.5                    # with labels: alpha·KL + (1-alpha)·cross-entropy
    loss: str = "auto"                    # auto | kl | cosine | mse | tokens (HF encoders: + per-token cosine)
    val_fraction: float = 0.2
    patience: int = 3                     # early stopping: epochs without improvement of the val metric
    seed: int = 0
    checkpoint_dir: str | None = None     # default: OUT/.distill-checkpoint
    max_samples: int = 20000
    threads: int | None = None            # torch CPU threads while training (default: torch's own setting)


@dataclass
class QuantizeConfig:
    """The precisions every format is exported in, and how int8 is calibrated (same as the CLI flags
    --precision, --calib, --observer, --max-drop; see docs/COMPRESSION.md)."""
    precision: list[str] = field(default_factory=lambda: ["int8"])
    calib: str | None = None              # calibration data directory
    observer: str | None = None           # static int8 activation observer (format registry: Format.observers)
    max_drop: str | None = None           # automatic mixed precision budget, "1%" or 0.01


@dataclass
class ExportConfig:
    """The target formats (same as --to)."""
    to: list[str] = field(default_factory=lambda: list(FORMAT_NAMES))


STEP_KINDS: dict[str, type] = {"prune": PruneConfig, "layer_drop": LayerDropConfig, "distill": DistillConfig}
# Steps that set how the compressed model is exported rather than change it: at most one each, after
# the compression steps, in this order (prune → layer_drop / distill → quantize → export).
SETTING_KINDS: dict[str, type] = {"quantize": QuantizeConfig, "export": ExportConfig}
ALIASES = {"global": "global_pruning"}    # user-facing key → field name
CHOICES = {"importance": ("l1", "l2", "taylor", "random"), "loss": ("auto", "kl", "cosine", "mse", "tokens")}


def _coerce(kind: str, name: str, value, tp):
    """Check/convert one value against the field's declared type (TOML values, or strings from the CLI)."""
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _coerce(kind, name, value, args[0])
    try:
        if origin is list:
            if isinstance(value, str):
                value = [v for v in value.replace(" ", "").split(",") if v]
            if not isinstance(value, list):
                raise ValueError
            return [_coerce(kind, name, v, args[0]) for v in value]
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", ""):
                return True
            if isinstance(value, str) and value.lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        pass
    raise UsageError(f"step {kind!r}: {ALIASES_INV.get(name, name)} = {value!r} is not a valid {_tname(tp)}",
                     step=kind, field=name)


ALIASES_INV = {v: k for k, v in ALIASES.items()}


def _tname(tp) -> str:
    return getattr(tp, "__name__", str(tp))


@dataclass(frozen=True)
class Step:
    """One recipe step, parsed: its kind, its typed config, and the fields the user set (for the manifest)."""
    kind: str
    config: object
    given: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        """The step as the user wrote it (user-facing keys), with the parsed values."""
        return {"kind": self.kind, **{k: getattr(self.config, ALIASES.get(k, k)) for k in self.given}}

    @property
    def compresses(self) -> bool:
        """prune / layer_drop / distill change the model; quantize / export only set how it is exported."""
        return self.kind in STEP_KINDS


def as_step(raw, where: str = "recipe") -> Step:
    """A Step as it is, or a raw `{kind = …}` table parsed into one."""
    return raw if isinstance(raw, Step) else parse_step(raw, where)


def parse_step(raw: dict, where: str = "recipe") -> Step:
    """A `{kind = ..., field = ...}` table → Step (typed config). Unknown kind/field → UsageError."""
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: a step must be a table with a `kind`, got {raw!r}")
    raw = dict(raw)
    kind = raw.pop("kind", None)
    kinds = {**STEP_KINDS, **SETTING_KINDS}
    if kind not in kinds:
        raise UsageError(f"{where}: unknown step kind {kind!r}; kinds are {', '.join(kinds)}", kind=kind)
    cls = kinds[kind]
    hints = typing.get_type_hints(cls)
    names = {ALIASES_INV.get(f.name, f.name): f.name for f in fields(cls)}
    unknown = [k for k in raw if k not in names]
    if unknown:
        raise UsageError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))} for step {kind!r}; "
                         f"fields are {', '.join(names)}", step=kind, fields=unknown)
    values = {names[k]: _coerce(kind, names[k], v, hints[names[k]]) for k, v in raw.items()}
    for name, allowed in CHOICES.items():
        if name in values and values[name] not in allowed:
            raise UsageError(f"{where}: step {kind!r}: {name} = {values[name]!r}; choose one of {', '.join(allowed)}",
                             step=kind, field=name)
    cfg = cls(**values)
    check_config(kind, cfg, where)
    return Step(kind, cfg, tuple(raw))


def check_config(kind: str, cfg, where: str = "recipe") -> None:
    if kind == "prune":
        ratios = {k: getattr(cfg, k) for k in ("channels", "heads", "ffn") if getattr(cfg, k) is not None}
        if not ratios:
            raise UsageError(f"{where}: step 'prune' needs channels=, heads= or ffn= (a fraction in [0, 1))")
        for k, r in ratios.items():
            if not 0.0 <= r < 1.0:
                raise UsageError(f"{where}: prune {k} = {r}: the ratio must be in [0, 1) "
                                 f"(1.0 would remove every {k[:-1] if k != 'ffn' else 'ffn neuron'})",
                                 field=k, value=r)
    elif kind == "layer_drop":
        if not cfg.keep:
            raise UsageError(f"{where}: step 'layer_drop' needs keep = [layer indices], e.g. keep = [0, 2, 4]")
        dup = sorted({i for i in cfg.keep if cfg.keep.count(i) > 1})
        if dup:
            raise UsageError(f"{where}: layer_drop keep lists layer(s) {dup} more than once", layers=dup)
    elif kind == "distill":
        bad = [(k, v) for k, v in (("epochs", cfg.epochs), ("batch_size", cfg.batch_size),
                                   ("max_samples", cfg.max_samples)) if v < 1]
        bad += [(k, v) for k, v in (("lr", cfg.lr), ("temperature", cfg.temperature)) if v <= 0]
        bad += [(k, v) for k, v in (("val_fraction", cfg.val_fraction), ("alpha", cfg.alpha))
                if not 0.0 < v < 1.0 and not (k == "alpha" and v in (0.0, 1.0))]
        if cfg.patience < 0:
            bad.append(("patience", cfg.patience))
        if bad:
            raise UsageError(f"{where}: distill " + ", ".join(f"{k} = {v}" for k, v in bad) + " out of range",
                             fields=[k for k, _ in bad])


def parse_steps(raw_steps: list, where: str = "recipe") -> list[Step]:
    return [as_step(s, f"{where} step {i + 1}") for i, s in enumerate(raw_steps)]


def load_recipe(path: str | Path) -> list[Step]:
    """`recipes/*.toml` → its steps, parsed. Top level: `description` and `[[steps]]`."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"recipe {path} does not exist")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"recipe {path}: not valid TOML ({exc})") from exc
    unknown = [k for k in doc if k not in ("description", "steps")]
    if unknown:
        raise UsageError(f"recipe {path}: unknown top-level key(s) {', '.join(map(repr, unknown))}; "
                         "expected `description` and [[steps]] tables", fields=unknown)
    steps = doc.get("steps", [])
    if not isinstance(steps, list) or not steps:
        raise UsageError(f"recipe {path}: no [[steps]] tables")
    parsed = parse_steps(steps, f"recipe {path}")
    check_order([s.kind for s in parsed], f"recipe {path}")
    return parsed


def check_order(kinds: list[str], where: str) -> None:
    """quantize / export come after every compression step, at most once each, quantize first."""
    settings = [k for k in kinds if k in SETTING_KINDS]
    if kinds[len(kinds) - len(settings):] != settings or settings not in ([], ["quantize"], ["export"],
                                                                          ["quantize", "export"]):
        raise UsageError(f"{where}: steps in the order {' → '.join(kinds)}; expected the compression steps "
                         "first, then at most one `quantize` and one `export`, in that order", steps=kinds)


def take_settings(steps: list[Step]) -> tuple[list[Step], dict]:
    """Split the steps into compression steps and the export settings of quantize / export
    ({"precisions", "calib", "observer", "max_drop", "formats"}: only what the steps set)."""
    settings: dict = {}
    for step in steps:
        if isinstance(step.config, QuantizeConfig):
            cfg = step.config
            settings.update({"precisions": cfg.precision, "calib": cfg.calib, "observer": cfg.observer,
                             "max_drop": cfg.max_drop})
        elif isinstance(step.config, ExportConfig):
            settings["formats"] = step.config.to
    return [s for s in steps if s.compresses], {k: v for k, v in settings.items() if v is not None}


SHORTHAND_KIND = {"prune": "prune", "drop-layers": "layer_drop", "distill": "distill", "quantize": "quantize"}
FLAGS = {"prune": ("global",)}


def parse_shorthand(option: str, text: str) -> Step:
    """`--prune channels=0.3,importance=l2,global` / `--drop-layers keep=0,2,4` / `--distill data=DIR,epochs=5`
    / `--quantize int8[,observer=minmax][,max_drop=1%]`.

    A token without `=` is a flag (prune: `global`), continues the previous list value (`keep=0,2,4`), or
    (quantize) leads with the precision list (`--quantize fp16,int8`)."""
    kind = SHORTHAND_KIND[option]
    step: dict = {"kind": kind}
    last = None
    if kind == "quantize" and text and "=" not in text.split(",")[0]:
        text = f"precision={text}"
    hints = typing.get_type_hints({**STEP_KINDS, **SETTING_KINDS}[kind])
    for tok in [t.strip() for t in text.split(",") if t.strip()]:
        if "=" in tok:
            key, value = (s.strip() for s in tok.split("=", 1))
            step[key] = value
            last = key
        elif tok in FLAGS.get(option, ()):
            step[tok] = True
        elif last is not None and typing.get_origin(hints.get(ALIASES.get(last, last))) is list:
            step[last] = f"{step[last]},{tok}"
        else:
            raise UsageError(f"--{option} {text!r}: unknown key {tok!r} (expected key=value)", field=tok)
    return parse_step(step, f"--{option}")


def config_dict(cfg) -> dict:
    return {ALIASES_INV.get(k, k): v for k, v in asdict(cfg).items()}


# ------------------------------------------------------------------ command line + recipe → one set of choices

SHORTHAND_ORDER = ("prune", "drop-layers", "distill", "quantize")
FLAG_NAMES = {"formats": "--to", "precisions": "--precision", "calib": "--calib", "observer": "--observer",
              "max_drop": "--max-drop"}


def parse_fraction(value, what: str) -> float | None:
    """'1%' / '0.01' / 0.01 → 0.01 (a budget such as --max-drop)."""
    if value is None or isinstance(value, float):
        return value
    v = str(value).strip()
    try:
        return float(v[:-1]) / 100 if v.endswith("%") else float(v)
    except ValueError:
        raise UsageError(f"{what} {value!r}: expected a fraction or a percentage, e.g. 1%") from None


def compression_steps(recipe_file, shorthands: dict) -> tuple[list[Step], dict]:
    """--recipe FILE steps, then the shorthands in the order prune → drop-layers → distill → quantize.
    Returns (compression steps, export settings of the quantize / export steps)."""
    steps = load_recipe(recipe_file) if recipe_file else []
    given = [(o, shorthands[o]) for o in SHORTHAND_ORDER if shorthands.get(o) is not None]
    steps += [parse_shorthand(option, text) for option, text in given]
    if given:
        check_order([s.kind for s in steps], "--recipe with shorthand flags")
    steps, settings = take_settings(steps)
    if "max_drop" in settings:
        settings["max_drop"] = parse_fraction(settings["max_drop"], "quantize step max_drop")
    return steps, settings


def merge_settings(flags: dict, settings: dict) -> dict:
    """A setting given both as a flag and by the recipe's quantize / export step must agree."""
    clash = [k for k in flags if flags[k] is not None and k in settings and flags[k] != settings[k]]
    if clash:
        show = lambda v: ",".join(v) if isinstance(v, list) else v   # noqa: E731
        raise UsageError("the command line and the recipe's quantize / export step disagree: " + "; ".join(
            f"{FLAG_NAMES[k]} {show(flags[k])} vs {show(settings[k])}" for k in clash), fields=clash)
    return {**settings, **{k: v for k, v in flags.items() if v is not None}}
