"""Coverage guard (Optimum's idea): every format × precision × family-kind cell of the registries is tested.

The cells come from the registries themselves (runtime/formats.py × runtime/families.py), so a format,
precision or family added there is tested here without anyone remembering to: each supported cell is
converted through the CLI from a tiny model of that kind, validated against torch fp32, loaded by the
runtime and run (where the format runs on this host); each refused cell must be refused with its
registry reason (exit 3) and publish nothing.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import artifact_names, assert_no_partial, run_cli
from test_huggingface import make_tiny_bert
from test_llm_sources import bytelevel_tokenizer, save_dir, tiny_llama

import pocketml.runtime as rt
from pocketml.runtime import families, formats

# One tiny model per family kind: (model reference, extra convert flags). Calibration is added for static int8.
MODELS = {
    "cnn": ("models:cnn32", ["--task", "image-classification"]),
    "transformer": (None, ["--task", "sentence-embedding", "--seq-len", "16"]),   # a tiny BERT dir, built below
    "generic": ("models:mlp64", []),
    "lm-decoder": (None, ["--task", "text-generation"]),                              # a tiny LLaMA dir, built below
}


def tiny_llama_dir(root):
    tok = bytelevel_tokenizer()
    return save_dir(tiny_llama(tok.get_vocab_size()), tok, root / "tiny-llama")


BUILDERS = {"transformer": lambda root: make_tiny_bert(root / "tiny-bert", layers=2, heads=2),
            "lm-decoder": tiny_llama_dir}
KINDS = sorted({f.kind for f in families.FAMILIES.values()})
CELLS = [(fmt, precision, kind) for fmt in formats.REGISTRY for precision in formats.PRECISIONS for kind in KINDS]


def test_generative_cells_name_their_exporter_and_runtime():
    """A format that takes a decoder at some precision must say how to export and run it."""
    for fmt in formats.REGISTRY.values():
        takes = [p for p in formats.PRECISIONS if not fmt.capability(p, "lm-decoder").refused]
        assert not takes or (fmt.lm_exporter and fmt.lm_runtime), (fmt.name, takes)
        # where the format cannot run everywhere, the converter checks what it can instead
        assert not takes or fmt.needs_os is None or fmt.lm_structure_check, (fmt.name, takes)


def test_every_family_kind_has_a_tiny_model():
    assert set(KINDS) <= set(MODELS), f"add a tiny model for family kind(s) {set(KINDS) - set(MODELS)}"


@pytest.fixture(scope="module")
def converted(tmp_path_factory, calib_dir):
    """kind -> (out dir, CLI output): each tiny model converted to every format × precision in one command."""
    done = {}
    for kind in KINDS:
        ref, flags = MODELS[kind]
        root = tmp_path_factory.mktemp(f"cells-{kind}")
        if ref is None:
            ref = BUILDERS[kind](root)
        if any(formats.capability(f, "int8", kind).calibrated for f in formats.REGISTRY):
            flags = [*flags, "--calib", calib_dir]
        out = root / "out"
        r = run_cli("convert", ref, *flags, "--to", ",".join(formats.REGISTRY),
                    "--precision", ",".join(formats.PRECISIONS), "-o", out)
        done[kind] = (out, r.output)
    return done


@pytest.mark.parametrize("fmt, precision, kind", CELLS, ids=["-".join(c) for c in CELLS])
def test_cell(converted, fmt, precision, kind):
    out, output = converted[kind]
    cap = formats.capability(fmt, precision, kind)
    name = formats.artifact_name(fmt, precision)
    assert_no_partial(out)
    if cap.refused:
        assert name not in artifact_names(out)
        assert f"{name}" in output and cap.refused in " ".join(output.split()), output
        return
    assert name in artifact_names(out), output
    m = json.loads((out / name / "manifest.json").read_text())
    assert m["format"] == fmt and m["precision"] == precision
    assert m["quantization"]["method"] in (cap.method, m["quantization"].get("method")) and m["quantization"]["method"]
    if families.for_task(m["task"]) and families.for_task(m["task"]).generative:
        if formats.get(fmt).host_support() is not None:      # e.g. Core ML off macOS: checked structurally
            assert m["validation"]["status"] == "structural", m["validation"]
            assert m["validation"]["numerics"].startswith("not run") and "stats" not in m["validation"]
            with pytest.raises(rt.EnvironmentMissing):
                rt.load(out / name)
            return
        assert m["validation"]["status"] == "passed", m["validation"]
        lm = rt.load(out / name)
        ids = lm.tokenizer.encode("The capital of France is").ids
        assert len(lm.generate_ids(ids, 3)) <= 3 and np.isfinite(lm.score(ids)).all()
        return
    assert m["quantization"]["method"] == cap.method
    if formats.get(fmt).host_support() is not None:
        assert m["validation"]["status"] == "structural-only"
        assert m["validation"]["numeric"].startswith("not run")
        return
    assert m["validation"]["status"] == "passed"
    sess = rt.load(out / name)
    ref = np.load(out / formats.REFERENCE_DIR / "inputs.npz")
    from pocketml.runtime.data import to_layout
    feeds = [to_layout(ref[t["name"]][:1], t.get("layout"), spec.layout)
             for t, spec in zip(json.loads((out / "reference" / "manifest.json").read_text())["inputs"],
                                sess.manifest.inputs)]
    y = sess.run(feeds)[sess.manifest.outputs[0].name]
    assert np.isfinite(y).all()
