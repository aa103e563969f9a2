"""Compression stage (convert/compress): prune → distill → int8 artifacts on digits; bad inputs; layer_drop; resume."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from conftest import run_cli, save_samples
from models import digits_data

import pocketml.runtime as rt
from pocketml.convert.compress import apply_steps, load_recipe, parse_shorthand
from pocketml.convert.pipeline import Recipe, run
from pocketml.convert.sources import load_factory
from pocketml.convert.spec import DataSet
from pocketml.runtime.errors import UsageError, ValidationFailed

DIGITS = "models:digits_cnn"


def accuracy_torch(module, x, y) -> float:
    with torch.no_grad():
        return float((module(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def accuracy_artifact(path, x, y) -> float:
    session = rt.load(path)
    nhwc = session.manifest.inputs[0].layout == "NHWC"
    hits = 0
    for xi, yi in zip(x, y):
        feed = xi[None].transpose(0, 2, 3, 1).copy() if nhwc else xi[None]
        hits += int(session.run([feed])["output_0"].argmax() == yi)
    return hits / len(y)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    x, y, xt, yt = digits_data()
    root = tmp_path_factory.mktemp("digits")
    train = root / "train"                      # digit_0000.npy …: sorted file order = label order
    train.mkdir()
    for i, a in enumerate(x):
        np.save(train / f"digit_{i:04d}.npy", a[None])
    np.save(root / "train_labels.npy", y)
    calib = save_samples(root / "calib", list(x[:128, None]))
    return {"x": x, "y": y, "xt": xt, "yt": yt, "train": train, "labels": root / "train_labels.npy", "calib": calib}


def digits_spec(digits, n_eval: int = 200):
    spec = load_factory(DIGITS, "image-classification")
    spec.eval = DataSet([[a[None].copy()] for a in digits["xt"][:n_eval]], f"{n_eval} held-out digits")
    return spec


def distill_step(digits, tmp_path, **kw):
    return {"kind": "distill", "data": str(digits["train"]), "labels": str(digits["labels"]), "epochs": 12,
            "lr": 3e-3, "threads": 1, "checkpoint_dir": str(tmp_path / "ck"), **kw}


# ------------------------------------------------------------------ the whole path: prune 50 %, distill, int8

@pytest.fixture(scope="module")
def compressed(digits, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compressed")
    spec = digits_spec(digits)
    teacher = spec.module
    w0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    recipe = Recipe(model=DIGITS, formats=["onnx", "tflite", "coreml"], precisions=["int8"],
                    calib=str(digits["calib"]), task="image-classification",
                    steps=[{"kind": "prune", "channels": 0.5}, distill_step(digits, tmp)])
    outcomes = run(recipe, tmp / "out", log=print, spec=spec)
    return {"out": tmp / "out", "outcomes": outcomes, "teacher": teacher, "w0": w0}


def test_prune_distill_int8_keeps_accuracy(compressed, digits):
    errors = [(o.name, o.error) for o in compressed["outcomes"] if o.error]
    assert not errors, errors
    teacher_acc = accuracy_torch(compressed["teacher"], digits["xt"], digits["yt"])
    assert teacher_acc >= 0.95
    accs = {}
    for name in ("onnx-int8", "tflite-int8"):
        accs[name] = accuracy_artifact(compressed["out"] / name, digits["xt"], digits["yt"])
    print(f"teacher {teacher_acc:.4f}, int8 artifacts {accs}")
    for name, acc in accs.items():
        assert acc >= teacher_acc - 0.010, f"{name}: {acc:.4f} vs teacher {teacher_acc:.4f}"


def test_compression_report_in_manifest(compressed):
    m = rt.load(compressed["out"] / "onnx-int8").manifest
    prune, distill = m.source["compression"]
    assert prune["step"] == "prune" and distill["step"] == "distill"
    assert prune["macs"][1] < 0.5 * prune["macs"][0] and prune["params"][1] < 0.5 * prune["params"][0]
    assert prune["metric"] == "top1_agreement" and prune["before"] == 1.0
    assert distill["after"] >= 0.95 and distill["after"] > distill["before"]
    assert m.source["sha256"] != m.source["original_sha256"]       # the student is a different model
    assert m.recipe["steps"][0]["kind"] == "prune"
    # the original model is untouched: it stays the reference
    for k, v in compressed["teacher"].state_dict().items():
        assert torch.equal(v, compressed["w0"][k])
    ref_out = np.load(compressed["out"] / "reference" / "outputs.npz")["output_0"]
    with torch.no_grad():
        x = np.load(compressed["out"] / "reference" / "inputs.npz")["input_0"]
        assert np.allclose(compressed["teacher"](torch.from_numpy(x)).numpy(), ref_out, atol=1e-5)


def test_pruned_tensors_really_smaller(digits):
    spec = digits_spec(digits, 16)
    student = apply_steps(spec, [{"kind": "prune", "channels": 0.5, "importance": "l2"}], log=lambda *_: None)
    convs = [m for m in student.module.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 32]
    assert student.module[-1].out_features == 10                    # the classifier is kept whole
    assert [c.out_channels for c in spec.module.modules() if isinstance(c, torch.nn.Conv2d)] == [32, 64, 64]


@pytest.mark.parametrize("how", ["taylor", "random", "global"])
def test_prune_variants(digits, how):
    spec = digits_spec(digits, 16)
    step = {"kind": "prune", "channels": 0.3, **({"global": True} if how == "global" else {"importance": how})}
    calib = DataSet([[a[None]] for a in digits["x"][:32]], "calib")
    student = apply_steps(spec, [step], calib, log=lambda *_: None)
    rep = student.source["compression"][0]
    assert rep["params"][1] < rep["params"][0] and rep["macs"][1] < rep["macs"][0]


# ------------------------------------------------------------------ bad inputs → exit 2 naming the thing

def _convert(*args, tmp_path):
    return run_cli("convert", DIGITS, "--task", "image-classification", "--to", "onnx", *args, "-o", tmp_path / "o")


@pytest.mark.parametrize("args, named", [
    (["--prune", "channels=1.0"], "1.0"),
    (["--prune", "channels=0.3,bogus=1"], "bogus"),
    (["--prune", "channels=0.3,importance=magic"], "magic"),
    (["--drop-layers", "keep=0,2,2"], "[2]"),
    (["--distill", "epochs=3,speed=9"], "speed"),
])
def test_cli_bad_shorthands(tmp_path, args, named):
    r = _convert(*args, tmp_path=tmp_path)
    assert r.exit_code == 2, r.output
    assert named in r.output


@pytest.mark.parametrize("body, named", [
    ('[[steps]]\nkind = "quantise"\n', "quantise"),
    ('[[steps]]\nkind = "quantize"\nprecision = ["int8"]\n[[steps]]\nkind = "prune"\nchannels = 0.3\n',
     "quantize → prune"),
    ('[[steps]]\nkind = "quantize"\nbits = 4\n', "bits"),
    ('[[steps]]\nkind = "prune"\nchannels = 0.3\nsparsity = 0.5\n', "sparsity"),
    ('[[steps]]\nkind = "prune"\nchannels = "a lot"\n', "a lot"),
    ('model = "x"\n[[steps]]\nkind = "prune"\nchannels = 0.3\n', "model"),
])
def test_cli_bad_recipe(tmp_path, body, named):
    f = tmp_path / "r.toml"
    f.write_text(body)
    r = _convert("--recipe", f, tmp_path=tmp_path)
    assert r.exit_code == 2, r.output
    assert named in r.output


def test_shipped_recipes_parse():
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent / "recipes"
    assert [s.kind for s in load_recipe(root / "minilm-phone.toml")] == ["layer_drop", "distill"]
    assert load_recipe(root / "minilm-phone.toml")[0].config.keep == [0, 2, 4]
    eff = load_recipe(root / "effnet-prune.toml")
    assert eff[0].as_dict() == {"kind": "prune", "channels": 0.3, "importance": "l1", "global": False}
    assert eff[0].config.global_pruning is False and eff[0].config.channels == 0.3      # typed, parsed once


def test_quantize_and_export_steps_set_what_is_exported(digits, tmp_path):
    """prune → quantize → export in a recipe file: the same as --prune … --precision … --to …"""
    f = tmp_path / "r.toml"
    f.write_text('[[steps]]\nkind = "prune"\nchannels = 0.5\n'
                 f'[[steps]]\nkind = "quantize"\nprecision = ["int8"]\nobserver = "minmax"\ncalib = "{digits["calib"]}"\n'
                 '[[steps]]\nkind = "export"\nto = ["onnx"]\n')
    r = run_cli("convert", DIGITS, "--task", "image-classification", "--recipe", f, "-o", tmp_path / "o")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir() if not p.name.startswith(".")) == ["onnx-int8", "reference"]
    m = rt.load(tmp_path / "o" / "onnx-int8").manifest
    assert m.quantization["calibration"]["observer"].startswith("minmax")
    assert [s["kind"] for s in m.recipe["steps"]] == ["prune"] and m.recipe["calib"] == str(digits["calib"])


@pytest.mark.parametrize("args, text", [
    (["--quantize", "int8", "--precision", "fp16"], "--precision fp16 vs int8"),
    (["--quantize", "int8,observer=minmax", "--observer", "entropy"], "--observer entropy vs minmax"),
    (["--quantize", "int8,max_drop=1%", "--max-drop", "0.01"], None),          # the same budget: no clash
])
def test_quantize_shorthand_must_agree_with_the_flags(tmp_path, args, text):
    r = run_cli("convert", "models:tiny_mlp", "--to", "onnx", *args, "-o", tmp_path / "o")
    if text is None:
        assert "disagree" not in r.output
    else:
        assert r.exit_code == 2 and text in r.output, r.output


def test_shorthands_fill_steps():
    assert parse_shorthand("prune", "channels=0.3,importance=l2,global").as_dict() == {
        "kind": "prune", "channels": 0.3, "importance": "l2", "global": True}
    assert parse_shorthand("drop-layers", "keep=0,2,4").as_dict() == {"kind": "layer_drop", "keep": [0, 2, 4]}
    assert parse_shorthand("distill", "data=/d,epochs=3").as_dict() == {"kind": "distill", "data": "/d", "epochs": 3}
    assert parse_shorthand("quantize", "fp16,int8,observer=minmax").as_dict() == {
        "kind": "quantize", "precision": ["fp16", "int8"], "observer": "minmax"}
    assert parse_shorthand("distill", "data=/d,epochs=3").config.epochs == 3


def test_prune_that_empties_a_layer_is_refused():
    from torch import nn
    from pocketml.convert.spec import ModelSpec
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.ReLU(), nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    spec = ModelSpec("narrow", m, [{"name": "x", "shape": [1, 1, 8, 8], "dtype": "float32", "layout": "NCHW"}],
                     ["y"], "image-classification", "top1", "image-classifier")
    with pytest.raises(UsageError, match="'0'"):
        apply_steps(spec, [{"kind": "prune", "channels": 0.5}], log=lambda *_: None)


def test_distill_too_little_data(digits, tmp_path):
    few = save_samples(tmp_path / "few", list(digits["x"][:5, None]))
    r = _convert("--prune", "channels=0.5", "--distill", f"data={few}", tmp_path=tmp_path)
    assert r.exit_code == 2, r.output
    assert "5 samples" in r.output


def test_output_signature_change_is_validation_failure(digits, monkeypatch):
    from pocketml.convert.compress import prune as prune_mod
    from torch import nn

    def bad_run(self, spec, ctx):
        from pocketml.convert.compress.report import clone
        s = clone(spec)
        s.module = nn.Sequential(s.module, nn.Linear(10, 3)).eval()
        return s
    monkeypatch.setattr(prune_mod.Prune, "run", bad_run)
    with pytest.raises(ValidationFailed) as e:
        apply_steps(digits_spec(digits, 8), [{"kind": "prune", "channels": 0.3}], log=lambda *_: None)
    assert e.value.exit_code == 5 and "[1, 3]" in str(e.value).replace("torch.Size(", "").replace("(", "[").replace(")", "]")


# ------------------------------------------------------------------ distillation resume

def test_distill_resumes_from_checkpoint(digits, tmp_path, monkeypatch):
    from pocketml.convert.compress import distill as distill_mod
    small = {"data": str(digits["train"]), "epochs": 3, "threads": 1, "max_samples": 300, "patience": 5}
    steps = lambda ck: [{"kind": "prune", "channels": 0.5}, {"kind": "distill", **small, "checkpoint_dir": str(ck)}]
    quiet = lambda *_: None
    whole = apply_steps(digits_spec(digits, 16), steps(tmp_path / "a"), log=quiet)

    def interrupt(epoch):
        if epoch == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(distill_mod, "after_epoch", interrupt)
    with pytest.raises(KeyboardInterrupt):
        apply_steps(digits_spec(digits, 16), steps(tmp_path / "b"), log=quiet)
    monkeypatch.setattr(distill_mod, "after_epoch", lambda epoch: None)
    lines = []
    resumed = apply_steps(digits_spec(digits, 16), steps(tmp_path / "b"), log=lines.append)
    assert any("resuming" in ln and "after epoch 2" in ln for ln in lines), lines
    for (k, a), b in zip(whole.module.state_dict().items(), resumed.module.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


def test_more_epochs_continue_a_finished_run(digits, tmp_path):
    """epochs 2, then the same recipe with epochs 3: resumes after epoch 2 and ends where an
    uninterrupted 3-epoch run ends."""
    base = {"data": str(digits["train"]), "threads": 1, "max_samples": 300, "patience": 5}
    steps = lambda ck, n: [{"kind": "prune", "channels": 0.5},
                           {"kind": "distill", **base, "epochs": n, "checkpoint_dir": str(ck)}]
    quiet = lambda *_: None
    whole = apply_steps(digits_spec(digits, 16), steps(tmp_path / "a", 3), log=quiet)
    apply_steps(digits_spec(digits, 16), steps(tmp_path / "b", 2), log=quiet)
    lines = []
    longer = apply_steps(digits_spec(digits, 16), steps(tmp_path / "b", 3), log=lines.append)
    assert any("resuming" in ln and "after epoch 2" in ln and "already finished" not in ln for ln in lines), lines
    assert any("distill epoch 3/3" in ln for ln in lines), lines
    for (k, a), b in zip(whole.module.state_dict().items(), longer.module.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), k


# ------------------------------------------------------------------ transformers: layer_drop, FFN pruning

@pytest.fixture(scope="module")
def tiny_bert_spec(tmp_path_factory):
    from test_huggingface import make_tiny_bert

    from pocketml.convert.sources import load_hf_dir
    d = make_tiny_bert(tmp_path_factory.mktemp("hf") / "tiny-bert6", layers=6, heads=4)

    def make():
        spec = load_hf_dir(d, "sentence-embedding", False, 16)
        from pocketml.runtime.text import encode
        pre = {**spec.preprocessing, "max_length": 16}
        spec.eval = DataSet(encode([f"sentence number {i} about phones" for i in range(8)], pre, spec.tokenizer_file), "e")
        spec.calib = DataSet(encode([f"calibration line {i}, on models" for i in range(40)], pre, spec.tokenizer_file), "c")
        return spec
    return make


def test_layer_drop_round_trips(tiny_bert_spec, tmp_path):
    from transformers import BertModel
    spec = tiny_bert_spec()
    student = apply_steps(spec, [{"kind": "layer_drop", "keep": [0, 2, 4]}], log=lambda *_: None)
    hf = student.module.model
    assert len(hf.encoder.layer) == 3 and hf.config.num_hidden_layers == 3
    assert len(spec.module.model.encoder.layer) == 6                  # the original is untouched
    rep = student.source["compression"][0]
    assert rep["params"][1] < rep["params"][0] and rep["metric"] == "mean_cosine"
    hf.save_pretrained(tmp_path / "small", safe_serialization=True)
    back = BertModel.from_pretrained(tmp_path / "small", attn_implementation="eager").eval()
    assert back.config.num_hidden_layers == 3
    ids, mask = (torch.from_numpy(a) for a in spec.eval.samples[0])
    with torch.no_grad():
        a = hf(input_ids=ids, attention_mask=mask).last_hidden_state
        b = back(input_ids=ids, attention_mask=mask).last_hidden_state
    assert torch.allclose(a, b, atol=1e-5)


def test_layer_drop_bad_indices(tiny_bert_spec, digits):
    with pytest.raises(UsageError, match=r"\[6, 9\]") as e:
        apply_steps(tiny_bert_spec(), [{"kind": "layer_drop", "keep": [0, 6, 9]}], log=lambda *_: None)
    assert e.value.exit_code == 2
    with pytest.raises(UsageError, match="Hugging Face encoder"):
        apply_steps(digits_spec(digits, 4), [{"kind": "layer_drop", "keep": [0]}], log=lambda *_: None)


def test_transformer_ffn_and_heads_pruning(tiny_bert_spec, tmp_path):
    spec = tiny_bert_spec()
    student = apply_steps(spec, [{"kind": "prune", "ffn": 0.5, "heads": 0.5},
                                 {"kind": "distill", "epochs": 2, "threads": 1, "checkpoint_dir": str(tmp_path)}],
                          log=lambda *_: None)
    layer = student.module.model.encoder.layer[0]
    assert layer.intermediate.dense.out_features == 32
    assert layer.attention.self.num_attention_heads == 2 and layer.attention.self.query.out_features == 16
    prune, distill = student.source["compression"]
    assert prune["params"][1] < prune["params"][0] and prune["macs"][1] < prune["macs"][0]
    ids, mask = (torch.from_numpy(a) for a in spec.eval.samples[0])
    with torch.no_grad():
        assert student.module(ids, mask).shape == spec.module(ids, mask).shape == (1, 32)


def test_token_loss_distills_a_dropped_encoder(tiny_bert_spec, tmp_path):
    """loss "tokens": embedding cosine + per-token cosine of the last hidden states. Random tiny BERT layers
    barely change the pooled output (cosine 0.9996 after the drop), so this checks the mechanics; the real
    MiniLM result is in docs/COMPRESSION.md."""
    spec = tiny_bert_spec()
    student = apply_steps(spec, [{"kind": "layer_drop", "keep": [0, 2, 4]},
                                 {"kind": "distill", "loss": "tokens", "epochs": 4, "lr": 1e-3, "threads": 1,
                                  "patience": 4, "checkpoint_dir": str(tmp_path)}], log=lambda *_: None)
    drop, distill = student.source["compression"]
    assert distill["before"] == drop["after"] and distill["after"] >= drop["after"] - 1e-3
    assert 0 <= distill["neighbour_agreement"] <= 1
    assert any("tokens loss" in n for n in distill["notes"])


def test_token_loss_needs_an_encoder(digits, tmp_path):
    with pytest.raises(UsageError, match="tokens"):
        apply_steps(digits_spec(digits, 4), [{"kind": "distill", "loss": "tokens", "data": str(digits["train"]),
                                              "epochs": 1, "max_samples": 50, "checkpoint_dir": str(tmp_path)}],
                    log=lambda *_: None)


def test_cli_shorthands_end_to_end(digits, tmp_path):
    out = tmp_path / "o"
    r = run_cli("convert", DIGITS, "--task", "image-classification", "--to", "onnx", "--precision", "fp32",
                "--prune", "channels=0.5,importance=l2", "--distill",
                f"data={digits['train']},epochs=1,max_samples=200,threads=1", "-o", out)
    assert r.exit_code == 0, r.output
    assert "prune" in r.output and "distill" in r.output
    m = rt.load(out / "onnx-fp32").manifest
    assert [s["step"] for s in m.source["compression"]] == ["prune", "distill"]
    assert m.recipe["steps"][0] == {"kind": "prune", "channels": 0.5, "importance": "l2"}
    assert list((out / ".distill-checkpoint").glob("*checkpoint.pt"))      # default checkpoint dir: OUT/


def test_long_steps_show_a_progress_bar_on_a_terminal(digits, tmp_path, monkeypatch):
    """On a terminal, once a step has run DELAY_S seconds, the teacher pass and the training epochs get a
    bar (rich, transient); the epoch reports still print. Off a terminal nothing but the lines is written."""
    import io

    from rich.console import Console

    from pocketml.convert import progress
    small = {"data": str(digits["train"]), "epochs": 2, "threads": 1, "max_samples": 300, "patience": 5}
    steps = [{"kind": "prune", "channels": 0.5}, {"kind": "distill", **small, "checkpoint_dir": str(tmp_path)}]
    screens, logs = {}, {}
    for terminal in (True, False):
        screen = io.StringIO()
        monkeypatch.setattr(progress, "DELAY_S", 0.0)
        monkeypatch.setattr(progress, "CONSOLE", Console(file=screen, force_terminal=terminal, width=120))
        lines = []
        apply_steps(digits_spec(digits, 16), [dict(s) for s in steps], log=lines.append)
        screens[terminal], logs[terminal] = screen.getvalue(), "\n".join(lines)
        for f in tmp_path.iterdir():                       # start over: no checkpoint to resume from
            f.unlink()
    assert "teacher outputs" in screens[True] and "distill epoch 2/2" in screens[True]
    assert "━" in screens[True]                                          # the bar itself
    assert "distill epoch 1/2: val top-1 agreement" in screens[True]     # reports print above the bar
    assert screens[False] == "" and "distill epoch 2/2: val top-1 agreement" in logs[False]


def test_apply_steps_refuses_export_settings(digits):
    with pytest.raises(UsageError, match="quantize"):
        apply_steps(digits_spec(digits, 4), [{"kind": "prune", "channels": 0.5},
                                             {"kind": "quantize", "precision": ["int8"]}], log=lambda *_: None)
