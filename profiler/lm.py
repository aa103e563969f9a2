"""Language-model artifacts in `pocketml profile`, parent side: lengths, the child's arguments, the row's
fixed fields, targets and verdict checks. The measuring is `profiler/lm_child.py`, in the sandboxed child.

Whether an artifact is a language model is the family registry's word (`families.for_task(task).generative`).
LM targets (optional in a device profile's `[targets]`; pocketml's defaults below otherwise):
`min_decode_tokens_per_s`, `max_ttft_ms` at `ttft_prompt_tokens`, `max_lm_memory_mb` at `lm_context_tokens`,
`max_perplexity_increase`; `max_lm_size_mb` only from `--max-size`. With a device, decode, TTFT and memory are
judged on the phone estimate (`profiler/estimate/lm_estimate.py`: bandwidth model, its band; PASS only when the
whole band meets the target, UNCERTAIN when it crosses), the host measurement beside it; quality is the host's.
"""
from __future__ import annotations

from dataclasses import dataclass

from pocketml.runtime.errors import UsageError
from pocketml.runtime.families import for_task

KIND = "language-model"
PHONE_THREADS = None        # the LM estimate's thread count on the phone: its default (lm_model.DEFAULT_THREADS)
# pocketml's defaults (not device facts): a flagship-phone-sized chat budget.
LM_DEFAULTS = {"min_decode_tokens_per_s": 20.0, "max_ttft_ms": 1000.0, "ttft_prompt_tokens": 128,
               "max_lm_memory_mb": 400.0, "lm_context_tokens": 1024, "max_perplexity_increase": 0.05}
LM_OVERRIDES = (*LM_DEFAULTS, "max_lm_size_mb")
DEFAULT_GEN_TOKENS = 128


@dataclass
class LMSettings:
    """What every language model of one `profile` run is measured with (None: from the targets)."""
    prompt_tokens: int | None = None
    gen_tokens: int = DEFAULT_GEN_TOKENS
    context: int | None = None

    def resolved(self, targets: dict) -> "LMSettings":
        s = LMSettings(self.prompt_tokens or targets["ttft_prompt_tokens"], self.gen_tokens,
                       self.context or targets["lm_context_tokens"])
        for flag, value in (("--prompt-tokens", s.prompt_tokens), ("--gen-tokens", s.gen_tokens),
                            ("--context", s.context)):
            if not isinstance(value, int) or value < 1:
                raise UsageError(f"{flag} {value!r}: an integer ≥ 1")
        return s

    def label(self) -> str:
        return (f"prompt {self.prompt_tokens} tokens, {self.gen_tokens} generated (greedy, EOS ignored), "
                f"decode at depth up to {self.context} tokens")


def is_lm(manifest) -> bool:
    family = for_task(manifest.task) if manifest.task else None
    return bool(family and family.generative)


def declared_context(manifest) -> int | None:
    ctx = (manifest.runtime_hints.get("generation") or {}).get("context_length")
    return ctx if isinstance(ctx, int) and not isinstance(ctx, bool) and ctx > 0 else None


def check_lengths(art, manifest, s: LMSettings) -> None:
    """A prompt (or prompt + generation) that does not fit the artifact's context: exit 2 naming both."""
    ctx = declared_context(manifest)
    if ctx is None:
        return                                  # the child's LanguageModel checks against what it loaded
    p, g = s.prompt_tokens, s.gen_tokens
    if p > ctx:
        raise UsageError(f"{art}: a prompt of {p} tokens (--prompt-tokens) is longer than {manifest.name}'s "
                         f"context of {ctx} tokens", prompt_tokens=p, context_length=ctx)
    if p + g > ctx:
        raise UsageError(f"{art}: a {p}-token prompt plus {g} generated tokens (--gen-tokens) is {p + g} tokens, "
                         f"beyond {manifest.name}'s context of {ctx} tokens", prompt_tokens=p, gen_tokens=g,
                         context_length=ctx)


def row_fields(manifest) -> dict:
    return {"kind": KIND, "parameters": manifest.source.get("parameter_count"),
            "context_length": declared_context(manifest)}


def child_args(s: LMSettings) -> dict:
    return {"prompt_tokens": s.prompt_tokens, "gen_tokens": s.gen_tokens, "context": s.context}


def accuracy_reference(meta: dict) -> str:
    return f"the fp32 reference ({meta['reference']}, from reference/manifest.json) on {meta['data']}"


def is_lm_row(row: dict) -> bool:
    return row.get("kind") == KIND


# ---------------------------------------------------------------- targets and verdict

def targets(profile: dict | None, overrides: dict) -> dict:
    """The LM targets: pocketml's defaults, then the device profile's, then the command line."""
    given = {k: profile["targets"][k] for k in LM_DEFAULTS if profile and k in profile["targets"]}
    t = {**LM_DEFAULTS, "max_lm_size_mb": None, **given}
    cli = {k: overrides[k] for k in LM_OVERRIDES if overrides.get(k) is not None}
    t.update(cli)
    src = f"device profile {profile['name']}" if given else "pocketml defaults" + (
        f" (device profile {profile['name']} states no language-model targets)" if profile else "")
    t["lm_source"] = src + (" with command-line overrides" if cli else "")
    return t


def judge(row: dict, t: dict, profile: dict | None) -> list[dict]:
    """The checks of a measured language-model row: on the phone estimate with a device, else on the host."""
    from .verdict import _check
    acc, est = row.get("accuracy") or {}, row.get("estimate") or {}
    checks = estimate_checks(est, t) if profile and "decode_tokens_per_s" in est else host_checks(row, t, profile)
    if acc:
        checks.append(_check("perplexity increase", acc["perplexity_change"], t["max_perplexity_increase"],
                             f"relative perplexity increase over {row['accuracy_reference']}"))
        checks.append(_check("non-finite logits", acc["nan_count"], 0, "NaN or ±inf in the artifact's logits"))
    if t.get("max_lm_size_mb"):
        checks.append(_check("size (MB)", row["size_mb"], t["max_lm_size_mb"], "model file(s) on disk"))
    return checks


def host_checks(row: dict, t: dict, profile: dict | None) -> list[dict]:
    from .verdict import _check, _min_check
    lengths, host = row["lengths"], row["measured"]
    if profile:
        why = (row.get("estimate") or {}).get("error", "no phone estimate")
        host += f", judged against {profile['name']}'s budget as a host number, not a phone one ({why})"
    p, g, n = lengths["prompt_tokens"], lengths["gen_tokens"], row["memory_context_tokens"]
    return [_min_check("decode tokens/s", row["decode"]["tokens_per_s"], t["min_decode_tokens_per_s"],
                       f"{host}; {g} greedy tokens after a {p}-token prompt"),
            _check("TTFT (ms)", row["ttft_ms"], t["max_ttft_ms"], f"{host}; {p}-token prompt"
                   + _stated(t["ttft_prompt_tokens"], p)),
            _check("memory (MB)", row["peak_rss_added_mb"], t["max_lm_memory_mb"],
                   f"peak resident memory added by the session on the host, KV cache holding {n} tokens"
                   + _stated(t["lm_context_tokens"], n))]


def estimate_checks(est: dict, t: dict) -> list[dict]:
    """Decode, TTFT and memory judged on the estimate's band against the device's LM targets."""
    n = est["lengths"]
    p, g, ctx = n["prompt_tokens"], n["gen_tokens"], n["context"]
    where = f"{est['device']}, {est['threads']} thread(s)"
    return [band_check("decode tokens/s", est["decode_tokens_per_s"], t["min_decode_tokens_per_s"], ">=",
                       f"{where}; {g} tokens after a {p}-token prompt"),
            band_check("TTFT (ms)", est["ttft_ms"], t["max_ttft_ms"], "<=",
                       f"{where}; {p}-token prompt, load excluded" + _stated(t["ttft_prompt_tokens"], p)),
            band_check("memory (MB)", est["memory_mb"], t["max_lm_memory_mb"], "<=",
                       f"{where}; weights + KV cache at {ctx} tokens + runtime overhead"
                       + _stated(t["lm_context_tokens"], ctx))]


def band_check(name: str, m: dict, limit: float, op: str, basis: str) -> dict:
    """PASS only when the whole band meets the target; a band that crosses it is uncertain (pass None)."""
    if op == ">=":
        ok = True if m["low"] >= limit else False if m["high"] < limit else None
    else:
        ok = True if m["high"] <= limit else False if m["low"] > limit else None
    return {"name": name, "value": m["value"], "low": m["low"], "high": m["high"], "limit": limit, "op": op,
            "pass": ok, "basis": f"{m['method']}; {basis}"}


def estimate_verdict(est: dict, profile: dict, overrides: dict | None = None) -> dict:
    """`pocketml estimate`'s verdict of one LM estimate against that device's own LM targets."""
    from .verdict import RESULT, _result
    t = targets(profile, overrides or {})
    if not est["runs_on_device"]:
        return {"result": "N/A: no runtime for this format", "checks": [], "targets": t["lm_source"]}
    checks = estimate_checks(est, t)
    return {**_result(checks), "targets": t["lm_source"]} if checks else {"result": RESULT[1], "checks": []}


def phone_estimate(row: dict, profile: dict, s: LMSettings) -> dict:
    """The LM estimate for a profiled row (its manifest was read and its files verified by the child), or
    {"error": why}."""
    from pocketml.runtime.errors import PocketmlError

    from .estimate.lm_estimate import estimate_lm
    try:
        return estimate_lm(row["artifact"], profile, prompt=s.prompt_tokens, gen=s.gen_tokens, context=s.context,
                           threads=PHONE_THREADS, verify=False)
    except PocketmlError as exc:
        return {"error": f"not estimated: {exc}"}


def _stated(target_tokens: int, measured: int) -> str:
    return "" if target_tokens == measured else f" (the target is stated at {target_tokens} tokens)"
