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


def _core(op: str) -> str:
    """'aten._linalg_det.default' / 'aten::linalg_det' / 'linalg_det' → 'linalg_det'."""
    name = op.replace("::", ".").split(".")
    name = [p for p in name if p not in ("aten", "default", "Tensor", "ops", "torch")]
    return (name[0] if name else op).strip("_")


def locate(rows: list[dict], spec) -> list[dict]:
    """One row per graph node using a rejected op, named by the node and its module path."""
    if spec is None or not rows:
        return rows
    try:
        import torch
        graph = torch.export.export(spec.module, spec.torch_example()).graph
    except Exception:  # the graph itself cannot be captured: keep the op-level rows
        return rows
    out = []
    for row in rows:
        nodes = [n for n in graph.nodes if n.op == "call_function" and _core(str(n.target)) == _core(row["op"])]
        for n in nodes:
            stack = list((n.meta.get("nn_module_stack") or {}).values())
            where = stack[-1][0] if stack else ""
            out.append({**row, "node": f"{where}:{n.name}" if where else n.name})
        if not nodes:
            out.append(row)
    return out


def unsupported(exc: Exception, target: str, model: str, spec=None) -> UnsupportedError:
    text = f"{type(exc).__name__}: {exc}"
    rows = locate(rejected_ops(text, target), spec)
    first = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
    if rows:
        msg = f"{model}: {target} cannot take op(s) {', '.join(dict.fromkeys(r['op'] for r in rows))}"
    else:
        msg = f"{model}: {target} conversion failed: {first}"
    return UnsupportedError(msg, rejected=rows, target=target, converter_message=first)
