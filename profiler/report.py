"""Reports people read: a terminal table (rich), report.json (schema pocketml.report/1), report.md."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from pocketml.runtime.atomic import ensure_writable_dir, write_file_atomic
from pocketml.runtime.errors import PocketmlError, UsageError
from pocketml.runtime.paths import open_regular, output_dir

from . import lm_report

COLUMNS = ("artifact", "host p50 ms", "host p90 ms", "cv", "load ms", "1st ms", "mem MB", "size MB", "accuracy",
           "device est. ms [band]", "verdict")
WORD = {True: "pass", False: "**FAIL**", None: "**UNCERTAIN**"}


def _est(row: dict) -> str:
    e = row.get("estimate")
    if not e:
        return "-"
    if "error" in e:
        return "n/a"
    return f"{e['latency_ms']:.1f} [{e['low_ms']:.1f}–{e['high_ms']:.1f}]"


def label(row: dict) -> str:
    """How a row is named for people: `name format-precision`, or a bare file's name."""
    if row.get("manifest"):
        return f"{row['name']} (no manifest)"
    return f"{row['name']} {row['format']}-{row['precision']}"


def _acc(row: dict) -> str:
    a = row.get("accuracy")
    if not a:
        return "not measured" if row.get("manifest") else "-"
    if "error" in a:
        return a["error"][:40]
    from pocketml.runtime.families import metric
    return metric(row["metric"]).show(a)          # how the family registry shows this metric


def cells(row: dict) -> list[str]:
    name = label(row)
    if row.get("status") != "measured":
        why = row.get("reason") or row.get("error", {}).get("message", "")
        return [name, "-", "-", "-", "-", "-", "-", f"{row['size_mb']:.2f}", why[:60], _est(row),
                row["verdict"]["result"]]
    lat = row["latency_ms"]
    return [name, f"{lat['p50']:.2f}", f"{lat['p90']:.2f}", f"{lat['cv']:.1%}", f"{row['load_ms']:.0f}",
            f"{row['first_inference_ms']:.1f}", f"{row['peak_rss_added_mb']:.0f}", f"{row['size_mb']:.2f}",
            _acc(row), _est(row), row["verdict"]["result"]]


def tensor_rows(report: dict) -> list[dict]:
    return [r for r in report["artifacts"] if not lm_report.is_lm_row(r)]


def header_lines(report: dict) -> list[str]:
    lm_lines = lm_report.header_lines(report) if lm_report.rows(report) else []
    if lm_lines and not tensor_rows(report):
        return lm_lines
    return _tensor_header_lines(report) + lm_lines


def _tensor_header_lines(report: dict) -> list[str]:
    s = report["settings"]
    lines = [f"Latency: measured on this host ({report['host']['cpu']}), {s['threads']} thread(s), "
             f"{s['warmup']} warm-up + {s['runs']} timed runs per artifact, each artifact in its own process."]
    if report.get("device"):
        d = report["device"]
        lines.append(f"Device: {d['display_name']} ({d['soc']}; {d['cpu']}). {d['latency_basis']}.")
    t = report["targets"]
    lines.append(f"Targets ({t['source']}): p90 ≤ {t['p90_latency_ms']:g} ms, accuracy drop ≤ "
                 f"{t['max_accuracy_drop']:.1%}" + (f", size ≤ {t['max_size_mb']:g} MB" if t.get("max_size_mb") else "")
                 + (f", memory ≤ {t['max_memory_mb']:g} MB" if t.get("max_memory_mb") else ""))
    lines += [f"{r['name']}: manifest {r['manifest']}; inputs: {r.get('inputs', '-')}"
              for r in report["artifacts"] if r.get("manifest")]
    refs = sorted({r["accuracy_reference"] for r in tensor_rows(report) if r.get("accuracy_reference")})
    lines += [f"Accuracy reference: {r}" for r in refs]
    return lines


def print_table(report: dict, console=None) -> None:
    from rich.table import Table

    console = console or make_console()
    if tensor_rows(report) or not lm_report.rows(report):
        table = Table(title=f"pocketml profile — overall {report['overall']}", show_lines=False)
        for c in COLUMNS:
            table.add_column(c, justify="left" if c in ("artifact", "accuracy") else "right")
        for row in tensor_rows(report):
            table.add_row(*styled(cells(row)))
        console.print(table)
    if lm_report.rows(report):
        lm_report.print_table(report, console, label)
    for line in header_lines(report) + lm_report.depth_lines(report, label):
        console.print(line, highlight=False, soft_wrap=True)
    emulated = [r for r in report["artifacts"] if r.get("emulated")]
    if emulated:
        console.print("Second opinion — " + emulated[0]["emulated"]["method"].split(":")[0] + ": "
                      + ", ".join(f"{label(r)} {r['emulated']['latency_ms']:.1f} ms"
                                  for r in emulated), highlight=False, soft_wrap=True)
    for row in report["artifacts"]:
        if row.get("status") == "error":   # the table cell is cut at 60 characters; print the whole message
            console.print(f"  ERROR {label(row)}: "
                          f"{row.get('error', {}).get('message', '')}", highlight=False, soft_wrap=True)
        failed = [c for c in row["verdict"]["checks"] if c["pass"] is not True]
        for c in failed:
            console.print(f"  {'FAIL' if c['pass'] is False else 'UNCERTAIN'} {label(row)}: "
                          f"{c['name']} {_versus(c)} ({c['basis']})", highlight=False)


STYLE = {"PASS": "green", "FAIL": "red", "ERROR": "red", "NOT MEASURED": "yellow", "UNCERTAIN": "yellow"}


def styled(cells: list[str]) -> list[str]:
    """The verdict cell coloured for the terminal."""
    return [*cells[:-1], f"[{STYLE.get(cells[-1], '')}]{cells[-1]}[/]"]


def _versus(c: dict) -> str:
    """'value > limit' for a miss; for a band that crosses the limit, the band itself."""
    if c["pass"] is None and "low" in c:
        return f"{c['value']:.4g}, band {c['low']:.4g}–{c['high']:.4g} crosses {c['limit']:g}"
    return f"{c['value']:.4g} {'<' if c.get('op') == '>=' else '>'} {c['limit']:g}"


def make_console():
    import sys

    from rich.console import Console
    return Console(width=None if sys.stdout.isatty() else 180)


def markdown(report: dict) -> str:
    out = [f"# pocketml profile report — overall **{report['overall']}**", ""]
    out += [f"- {line}" for line in header_lines(report)]
    if tensor_rows(report) or not lm_report.rows(report):
        out += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        out += ["| " + " | ".join(cells(r)) + " |" for r in tensor_rows(report)]
    if lm_report.rows(report):
        out += lm_report.markdown(report, label)
    emulated = [r for r in report["artifacts"] if r.get("emulated")]
    if emulated:
        out += ["", "## Latency on the device, two ways", "",
                "| artifact | estimated ms [band] | emulated ms (host p50 × kernel ratios) |", "|---|---|---|"]
        out += [f"| {label(r)} | {_est(r)} | {r['emulated']['latency_ms']:.1f} |"
                for r in emulated]
    out += ["", "## Checks", ""]
    for r in report["artifacts"]:
        for c in r["verdict"]["checks"]:
            bound = "floor" if c.get("op") == ">=" else "limit"
            out.append(f"- {label(r)}: {c['name']} = {c['value']:.4g} "
                       f"({bound} {c['limit']:g}) → {WORD[c['pass']]} — {c['basis']}")
        if r.get("status") != "measured":
            out.append(f"- {label(r)}: {r.get('status')} — "
                       f"{r.get('reason') or r.get('error', {}).get('message', '')}")
    return "\n".join(out) + "\n"


def report_dir(paths, out_dir=None, allow_symlinks: bool = False) -> Path:
    """Where report.json / report.md go, checked before anything runs: `-o`, else the directory profiled
    (the parent of a model file, and of an artifact directory). Never inside an artifact or a reference
    set (a directory with a pocketml manifest.json: its checksums cover what is there, exit 2), never
    through a symlink (`runtime/paths.output_dir`, exit 4). Creates nothing."""
    if out_dir is not None:
        target = Path(out_dir)
    else:
        first = Path(paths[0])
        target = first if first.is_dir() else first.parent
        if _is_artifact(target):
            target = Path(os.path.abspath(target)).parent
    target = output_dir(target, allow_symlinks)
    here = Path(os.path.abspath(target))     # lexical is physical now: no link on the way
    for d in (here, *here.parents):
        if _is_artifact(d):
            raise UsageError(f"refusing to write report.json / report.md into {target}: it is inside the "
                             f"artifact {d} (its manifest's checksums cover that directory); choose -o DIR "
                             "outside it", path=str(target), artifact=str(d))
    return target


_POCKETML_SCHEMA = re.compile(rb'"schema"\s*:\s*"pocketml\.')


def _is_artifact(d: Path) -> bool:
    """A pocketml artifact or reference set: its manifest.json names a pocketml schema."""
    if not os.path.lexists(d / "manifest.json"):
        return False
    try:
        with open_regular(d / "manifest.json") as fh:
            return bool(_POCKETML_SCHEMA.search(fh.read(4 << 20)))
    except (OSError, PocketmlError):
        return True                     # unreadable or a symlink: do not write beside it either


def write(report: dict, out_dir: Path, allow_symlinks: bool = False) -> tuple[Path, Path]:
    out_dir = ensure_writable_dir(Path(out_dir), allow_symlinks)
    j = write_file_atomic(out_dir / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    m = write_file_atomic(out_dir / "report.md", markdown(report).encode())
    return j, m


def print_estimates(rows: list[dict], threads: int, limit_ms: float, console=None) -> None:
    """`pocketml estimate`'s table, then each distinct note once."""
    from rich.table import Table
    t = Table(title=f"pocketml estimate — {threads} thread(s), budget {limit_ms:g} ms")
    for c in ("artifact", "device", "estimate ms", "band ms", f"≤ {limit_ms:g} ms", "method", "emulated ms"):
        t.add_column(c)
    for e in rows:
        t.add_row(Path(e["artifact"]).name, e["device"], f"{e['latency_ms']:.1f}",
                  f"{e['low_ms']:.1f}–{e['high_ms']:.1f}", e["verdict"], e["method"],
                  f"{e['emulated']['latency_ms']:.1f}" if e.get("emulated") else "-")
    (console or make_console()).print(t)
    for n in sorted({n for e in rows for n in e.get("notes", [])}):
        print(f"note: {n}")


def print_devices(profiles: list[dict], console=None) -> None:
    """`pocketml devices`' table."""
    from rich.table import Table

    from .devices import cpu_summary
    t = Table(title="pocketml device profiles")
    for c in ("name", "device", "SoC", "CPU", "RAM", "p90 target", "max drop", "tier"):
        t.add_column(c)
    for p in profiles:
        t.add_row(p["name"], p["display_name"], p["soc"]["name"], cpu_summary(p), f"{p['memory']['ram_gb']:g} GB",
                  f"{p['targets']['p90_latency_ms']:g} ms", f"{p['targets']['max_accuracy_drop']:.0%}", p["tier"])
    (console or make_console()).print(t)
