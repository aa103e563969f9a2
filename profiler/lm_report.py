"""The language-model part of the profile report: its own table (terminal and report.md), the lines that
say how and against what it was measured, and decode speed at context depth."""
from __future__ import annotations

from .lm import NOT_ESTIMATED, is_lm_row

COLUMNS = ("artifact", "params", "size MB", "ppl change (ppl)", "next-token agree", "TTFT ms", "prefill tok/s",
           "decode tok/s", "decode p90 ms", "mem MB @ tokens", "verdict")


def rows(report: dict) -> list[dict]:
    return [r for r in report["artifacts"] if is_lm_row(r)]


def _params(n) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    return f"{n / 1e6:.1f} M" if n >= 1e5 else f"{n / 1e3:.1f} k"


def _quality(row: dict) -> list[str]:
    a = row.get("accuracy")
    if not a:
        return ["not measured", "-"]
    return [f"{a['perplexity_change']:+.2%} ({a['perplexity']:.2f})", f"{a['top1_agreement']:.3f}"]


def _g(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.3g}"


def cells(row: dict, label) -> list[str]:
    name, size, verdict = label(row), f"{row['size_mb']:.2f}", row["verdict"]["result"]
    if row.get("status") != "measured":
        why = row.get("reason") or row.get("error", {}).get("message", "")
        return [name, _params(row.get("parameters")), size, why[:60], "-", "-", "-", "-", "-", "-", verdict]
    d = row["decode"]
    return [name, _params(row.get("parameters")), size, *_quality(row), _g(row["ttft_ms"]),
            f"{row['prefill_tokens_per_s']:.0f}", f"{d['tokens_per_s']:.1f}", _g(d["latency_ms"]["p90"]),
            f"{row['peak_rss_added_mb']:.0f} @ {row['memory_context_tokens']}", verdict]


def header_lines(report: dict) -> list[str]:
    s, t = report["settings"], report["targets"]
    lm = s.get("lm") or {}
    lines = [f"Language models: measured on this host ({report['host']['cpu']}), {s['threads']} thread(s), "
             f"{lm.get('label', '')}; each artifact in its own process. Prompt = the reference set's held-out token "
             "ids (repeated if short; tokenisation not included); TTFT = prefill + first greedy pick, median of 3 "
             "warm runs; decode tok/s = greedy decode steps / their time; memory = peak resident memory added by "
             "the session with the KV cache holding the stated number of tokens."]
    if report.get("device"):
        d = report["device"]
        lines.append(f"Device {d['display_name']}: language-model decode and TTFT are judged on the host measurement "
                     f"against its budget ({NOT_ESTIMATED}).")
    lines.append(f"LM targets ({t['lm_source']}): decode ≥ {t['min_decode_tokens_per_s']:g} tok/s, TTFT ≤ "
                 f"{t['max_ttft_ms']:g} ms at a {t['ttft_prompt_tokens']}-token prompt, memory ≤ "
                 f"{t['max_lm_memory_mb']:g} MB at {t['lm_context_tokens']} tokens, perplexity increase ≤ "
                 f"{t['max_perplexity_increase']:.1%}" + (f", size ≤ {t['max_lm_size_mb']:g} MB"
                                                          if t.get("max_lm_size_mb") else ""))
    refs = sorted({r["accuracy_reference"] for r in rows(report) if r.get("accuracy_reference")})
    lines += [f"Quality against {r}" for r in refs]
    return lines


def depth_lines(report: dict, label) -> list[str]:
    return [f"Decode at depth, {label(r)}: " + ", ".join(f"{d['depth_tokens']} cached → "
                                                         f"{d['tokens_per_s']:.1f} tok/s" for d in r["depths"])
            + f" ({r['depths'][0]['decode_tokens']} steps each); KV cache {r['kv_bytes_per_token']} B/token, "
              f"{r['kv_cache_mb_at_context']:.1f} MB at the {r['context_length']}-token context"
            for r in rows(report) if r.get("status") == "measured"]


def print_table(report: dict, console, label) -> None:
    from rich.table import Table
    table = Table(title=f"language models — overall {report['overall']}")
    for c in COLUMNS:
        table.add_column(c, justify="left" if c in ("artifact", "ppl change (ppl)") else "right")
    from .report import styled
    for row in rows(report):
        table.add_row(*styled(cells(row, label)))
    console.print(table)


def markdown(report: dict, label) -> list[str]:
    out = ["", "## Language models", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(cells(r, label)) + " |" for r in rows(report)]
    measured = [r for r in rows(report) if r.get("status") == "measured"]
    if measured:
        out += ["", "| artifact | tokens cached | decode tok/s | p50 ms/token | steps |", "|---|---|---|---|---|"]
        out += [f"| {label(r)} | {d['depth_tokens']} | {d['tokens_per_s']:.1f} | {d['p50_ms']:.2f} | "
                f"{d['decode_tokens']} |" for r in measured for d in r["depths"]]
    return out
