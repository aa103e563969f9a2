"""Turn converter exceptions into UnsupportedError with a table of rejected ops."""
from __future__ import annotations

import re

from pocketml.runtime.errors import UnsupportedError

PATTERNS = [
    re.compile(r"(aten[.:]{1,2}[\w.]+)"),
    re.compile(r"convert function for op '([\w.]+)' not implemented"),
    re.compile(r"[Uu]nsupported (?:op|operator)s?:?\s*'?([\w.:]+)"),
    re.compile(r"No lowering (?:found )?for ([\w.:]+)"),
    re.compile(r"[Uu]nsupported fx node ([\w.:]+)"),
]


def rejected_ops(message: str, target: str) -> list[dict]:
    seen, rows = set(), []
    for pat in PATTERNS:
        for op in pat.findall(message):
            op = op.rstrip(".")
            if op not in seen:
                seen.add(op)
                rows.append({"node": "-", "op": op, "target": target,
                             "reason": "no conversion rule for this op in the target converter"})
    return rows


def unsupported(exc: Exception, target: str, model: str) -> UnsupportedError:
    text = f"{type(exc).__name__}: {exc}"
    rows = rejected_ops(text, target)
    first = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
    if rows:
        msg = f"{model}: {target} cannot take op(s) {', '.join(r['op'] for r in rows)}"
    else:
        msg = f"{model}: {target} conversion failed: {first}"
    return UnsupportedError(msg, rejected=rows, target=target, converter_message=first)
