"""The language-model part of the profile report: its own table (terminal and report.md), the lines that
say how and against what it was measured, decode speed at context depth, and, with a device, the host
measurement beside the phone estimate (each labelled), and `pocketml estimate`'s LM table."""
from __future__ import annotations

from .lm import is_lm_row

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
        lines.append(f"Device {d['display_name']}: language-model decode, TTFT and memory are judged on the phone "
                     "estimate (bandwidth model fitted on published phone measurements, docs/ESTIMATE.md) with its "
                     "band, PASS only when the whole band meets the target; the host measurement is shown beside it "
                     "and is not a phone number.")
    lines.append(f"LM targets ({t['lm_source']}): decode ≥ {t['min_decode_tokens_per_s']:g} tok/s, TTFT ≤ "
                 f"{t['max_ttft_ms']:g} ms at a {t['ttft_prompt_tokens']}-token prompt, memory ≤ "
                 f"{t['max_lm_memory_mb']:g} MB at {t['lm_context_tokens']} tokens, perplexity increase ≤ "
                 f"{t['max_perplexity_increase']:.1%}" + (f", size ≤ {t['max_lm_size_mb']:g} MB"
                                                          if t.get("max_lm_size_mb") else ""))
    refs = sorted({r["accuracy_reference"] for r in rows(report) if r.get("accuracy_reference")})
    lines += [f"Quality against {r}" for r in refs]
    return lines


def depth_lines(report: dict, label) -> list[str]:
    """Decode at depth per measured row, then the host measurement beside the phone estimate."""
    return _depths(report, label) + estimate_lines(report, label)


def _depths(report: dict, label) -> list[str]:
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
    return out + estimate_markdown(report, label)


# ---------------------------------------------------------------- host measurement beside the phone estimate

SIDE = (("TTFT ms", "ttft_ms", lambda r: r["ttft_ms"]),
        ("prefill tok/s", "prefill_tokens_per_s", lambda r: r["prefill_tokens_per_s"]),
        ("decode tok/s", "decode_tokens_per_s", lambda r: r["decode"]["tokens_per_s"]),
        ("decode @ context tok/s", "decode_tokens_per_s_at_context", lambda r: r["depths"][-1]["tokens_per_s"]),
        ("memory MB", "memory_mb", lambda r: r["peak_rss_added_mb"]))


def _band_cell(m: dict) -> str:
    return f"{_g(m['value'])} ({_g(m['low'])}–{_g(m['high'])})"


def side_by_side(report: dict, label) -> list[list[str]]:
    """[what, how, metric cells...] rows: the host measurement and the phone estimate of each LM artifact."""
    out = []
    for r in rows(report):
        est = r.get("estimate") or {}
        if r.get("status") == "measured":
            out.append([label(r), r["measured"], *(_g(get(r)) for _, _, get in SIDE)])
        if "decode_tokens_per_s" in est:
            how = f"{est['decode_tokens_per_s']['method']} on {est['device']}, {est['threads']} threads"
            out.append([label(r), how, *(_band_cell(est[key]) for _, key, _ in SIDE)])
        elif est.get("error"):
            out.append([label(r), est["error"], *("-" for _ in SIDE)])
    return out


def estimate_lines(report: dict, label) -> list[str]:
    return [f"{what}: {how}: " + ", ".join(f"{h} {c}" for (h, _, _), c in zip(SIDE, cells))
            for what, how, *cells in side_by_side(report, label)]


def estimate_markdown(report: dict, label) -> list[str]:
    table = side_by_side(report, label)
    if not table:
        return []
    head = ["artifact", "how obtained", *(h for h, _, _ in SIDE)]
    return ["", "Host measurement beside the phone estimate (estimate: value (band low–high)):", "",
            "| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(t) + " |" for t in table]


def print_estimates(rows_: list[dict], console=None) -> None:
    """`pocketml estimate`'s table for language-model rows, then each distinct note once."""
    from rich.table import Table

    from .report import make_console, styled
    t = Table(title="pocketml estimate — language models: estimate (band low–high)")
    for c in ("artifact", "device", "threads", "TTFT ms", "prefill tok/s", "decode tok/s", "decode @ ctx",
              "memory MB", "verdict"):
        t.add_column(c)
    for e in rows_:
        t.add_row(*styled([e["artifact"].rstrip("/").split("/")[-1], e["device"], str(e["threads"]),
                           *(_band_cell(e[k]) for k in ("ttft_ms", "prefill_tokens_per_s", "decode_tokens_per_s",
                                                        "decode_tokens_per_s_at_context", "memory_mb")),
                           e["verdict"]["result"]]))
    (console or make_console()).print(t)
    for key, what in (("ttft_ms", "TTFT and prefill"), ("decode_tokens_per_s", "decode"), ("memory_mb", "memory")):
        for m in sorted({e[key]["method"] for e in rows_}):
            print(f"{what}: {m}")
    for n in sorted({n for e in rows_ for n in e.get("notes", [])}):
        print(f"note: {n}")
