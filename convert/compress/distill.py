"""Knowledge distillation: train the student against the original model (the teacher) on unlabelled data.

Classifiers: KL divergence of temperature-softened logits (plus cross-entropy when labels are given).
Embeddings: 1 − cosine + MSE on the outputs. CPU, deterministic for a seed, a held-out validation split,
early stopping on the validation metric, a checkpoint every epoch (an interrupted run resumes).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from pocketml.runtime.atomic import ensure_writable_dir
from pocketml.runtime.errors import UsageError
from pocketml.runtime.families import metric as metric_of

from ..progress import Bar
from .recipe import DistillConfig, config_dict
from .report import Context, agreement, clone, first, state_digest, to_torch

MIN_TRAIN, MIN_VAL = 8, 2
CHECKPOINT = "checkpoint.pt"


def after_epoch(epoch: int) -> None:
    """Hook called after each epoch's checkpoint is written (tests use it to simulate an interruption)."""


def load_training_data(cfg: DistillConfig, spec, ctx: Context):
    from pocketml.runtime.data import load_data_dir
    if cfg.data:
        pre = dict(spec.preprocessing)
        if spec.tokenizer_file:
            pre["tokenizer_file"] = str(spec.tokenizer_file)
        samples, source = load_data_dir(Path(cfg.data), spec.inputs, pre), f"user data {cfg.data}"
    elif ctx.teacher.train is not None:             # a built-in model's own distillation data
        ctx.log("  distill: loading the built-in distillation data")
        ds = ctx.teacher.train()
        samples, source = ds.samples, ds.source
    else:
        ds = ctx.calib or ctx.teacher.calib
        if ds is None or not ds.samples:
            raise UsageError(f"distill needs unlabelled data: pass data=DIR (images, .npy, .txt); {spec.name} has "
                             "no calibration set to use (the evaluation set is never used for training)")
        samples, source = ds.samples, f"calibration set: {ds.source}"
    labels = None
    if cfg.labels:
        p = Path(cfg.labels)
        if not p.is_file():
            raise UsageError(f"distill labels file {p} does not exist")
        try:
            labels = (np.load(p, allow_pickle=False) if p.suffix == ".npy"
                      else np.array([int(x) for x in p.read_text().split()]))
        except ValueError as exc:
            raise UsageError(f"distill labels {p}: not integer labels ({exc})") from exc
        labels = labels.astype(np.int64).reshape(-1)
        if len(labels) != len(samples):
            raise UsageError(f"distill labels {p}: {len(labels)} labels for {len(samples)} samples")
        if not metric_of(spec.metric).classifier:
            raise UsageError(f"distill labels are for classifiers; {spec.name} is judged by {spec.metric}")
    return samples[:cfg.max_samples], (labels[:cfg.max_samples] if labels is not None else None), source


def split(n: int, cfg: DistillConfig):
    n_val = int(round(n * cfg.val_fraction))
    if n - n_val < MIN_TRAIN or n_val < MIN_VAL:
        raise UsageError(f"distill has {n} samples: too few for a training/validation split "
                         f"(val_fraction {cfg.val_fraction} → need ≥ {MIN_TRAIN} to train and ≥ {MIN_VAL} to "
                         "validate); pass more data with data=DIR", samples=n)
    perm = np.random.default_rng(cfg.seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def stack(samples, idx, mask_at: int | None = None):
    """A batch from samples[idx]. Text models with pooled outputs: trailing padding beyond the longest
    attention mask is cut (same outputs — padded positions are masked — at a fraction of the cost)."""
    import torch
    batch = [torch.cat(t) for t in zip(*[to_torch(samples[i]) for i in idx])]
    if mask_at is not None:
        n = max(int(batch[mask_at].sum(1).max()), 1)
        batch = [b[:, :n] if b.ndim >= 2 and b.shape[1] == batch[mask_at].shape[1] else b for b in batch]
    return batch


def teacher_pass(teacher, samples, mask_at, tokens: bool = False, batch: int = 64, bar=None):
    """One pass of the teacher in batches of similar length (fast for text): per sample its first output
    and, with `tokens` (loss "tokens"), the last hidden states of its real tokens ([n_tokens, hidden],
    fp16 to save memory; the output is then pooled from them, as the teacher's forward does)."""
    import torch
    order = np.arange(len(samples))
    if mask_at is not None:
        order = np.argsort([int(np.asarray(s[mask_at]).sum()) for s in samples], kind="stable")
    outs, toks = [None] * len(samples), ([None] * len(samples) if tokens else None)
    with torch.no_grad():
        for i in range(0, len(order), batch):
            idx = order[i:i + batch]
            b = stack(samples, idx, mask_at)
            if tokens:
                h = teacher.tokens(*b)
                y = first(teacher.pool(h, b[mask_at])).float()
            else:
                y = first(teacher(*b)).float()
            for j, k in enumerate(idx):
                outs[k] = y[j:j + 1]
                if tokens:
                    toks[k] = h[j, :int(b[mask_at][j].sum())].half()
            if bar:
                bar.advance(len(idx))
    return outs, toks


def token_loss(s_hidden, t_tokens, mask):
    """1 − cosine per real token, averaged over the batch's real tokens."""
    import torch
    import torch.nn.functional as F
    t = torch.zeros_like(s_hidden)
    for j, tt in enumerate(t_tokens):
        t[j, :len(tt)] = tt.float()
    m = mask.to(s_hidden.dtype)
    cos = F.cosine_similarity(s_hidden, t, dim=-1)
    return ((1 - cos) * m).sum() / m.sum().clamp(min=1)


def mask_index(spec) -> int | None:
    names = [i["name"] for i in spec.inputs]
    pooled = spec.task in ("sentence-embedding", "text-classification")
    return names.index("attention_mask") if pooled and "attention_mask" in names else None


def checkpoint_fingerprint(cfg: DistillConfig, model, samples, labels) -> str:
    """The checkpoint belongs to what decides the training: the config, the incoming student and the data's
    content. Left out: epochs / patience (when to stop: a longer run resumes from a shorter one's
    checkpoint), where the data or checkpoint live (the content is hashed), and the thread count."""
    identity = {k: v for k, v in config_dict(cfg).items()
                if k not in ("epochs", "patience", "data", "checkpoint_dir", "threads")}
    h = hashlib.sha256(json.dumps([identity, state_digest(model), len(samples)], sort_keys=True,
                                  default=str).encode())
    for s in samples:
        for x in s:
            h.update(np.ascontiguousarray(x).tobytes())
    if labels is not None:
        h.update(labels.tobytes())
    return h.hexdigest()[:16]


class Distill:
    kind = "distill"

    def __init__(self, cfg: DistillConfig):
        self.cfg = cfg

    def loss_kind(self, spec) -> str:
        if self.cfg.loss != "auto":
            return self.cfg.loss
        return metric_of(spec.metric).distill_loss

    def loss(self, kind, s, t, y=None):
        import torch.nn.functional as F
        s, t = s.reshape(s.shape[0], -1).float(), t.reshape(t.shape[0], -1).float()
        if kind == "kl":
            T = self.cfg.temperature
            loss = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True,
                            reduction="batchmean") * T * T
            if y is not None:
                loss = self.cfg.alpha * loss + (1 - self.cfg.alpha) * F.cross_entropy(s, y)
            return loss
        if kind in ("cosine", "tokens"):      # tokens: this is the output part; token_loss adds the rest
            return (1 - F.cosine_similarity(s, t, dim=-1)).mean() + F.mse_loss(s, t)
        return F.mse_loss(s, t)

    def checkpoint_dir(self, ctx: Context) -> Path:
        if self.cfg.checkpoint_dir:
            return Path(self.cfg.checkpoint_dir)
        return (ctx.out_dir or Path.cwd()) / ".distill-checkpoint"

    def run(self, spec, ctx: Context):
        import torch
        cfg = self.cfg
        samples, labels, source = load_training_data(cfg, spec, ctx)
        tr, va = split(len(samples), cfg)
        student = clone(spec)
        model = student.module
        kind = self.loss_kind(spec)
        mask_at = mask_index(spec)
        teacher = ctx.teacher.module.eval()           # the original model: ctx.teacher, never trained
        if kind == "tokens" and (mask_at is None or not hasattr(model, "tokens") or not hasattr(teacher, "tokens")):
            raise UsageError('distill loss "tokens" matches per-token hidden states: it needs a Hugging '
                             "Face encoder (sentence-embedding / feature-extraction) as teacher and student")
        fingerprint = checkpoint_fingerprint(cfg, model, samples, labels)
        ckdir = self.checkpoint_dir(ctx)
        ckdir = ensure_writable_dir(ckdir)     # never through a symlink (runtime/paths.output_dir)
        ckfile = ckdir / f"{fingerprint}-{CHECKPOINT}"
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        state = {"epoch": 0, "best_score": [-1e9, -1e9], "best_epoch": 0, "bad_epochs": 0, "done": False,
                 "history": []}
        best = {k: v.clone() for k, v in model.state_dict().items()}
        if ckfile.is_file():
            ck = torch.load(ckfile, map_location="cpu", weights_only=True)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optim"])
            best = ck["best"]
            state = json.loads(ck["state"])
            if state["done"] and state["epoch"] < cfg.epochs and state["bad_epochs"] <= cfg.patience:
                state["done"] = False            # stopped at the old epoch limit: train on to the new one
            ctx.log(f"  distill: resuming from {ckfile} after epoch {state['epoch']}"
                    + (" (already finished)" if state["done"] else ""))
            ctx.notes.append(f"resumed from checkpoint after epoch {state['epoch']}")
        t_out = t_tok = None
        if not state["done"]:                 # teacher outputs once; a finished run needs none
            with Bar("distill: teacher outputs", len(samples), log=ctx.log) as bar:
                t_out, t_tok = teacher_pass(teacher, samples, mask_at, tokens=kind == "tokens", bar=bar)

        def evaluate():
            model.eval()
            with torch.no_grad():
                outs = [first(model(*b)).float() for b in (stack(samples, va[i:i + 64], mask_at) for i in range(0, len(va), 64))]
            s = torch.cat(outs)
            t = torch.cat([t_out[i] for i in va])
            val_loss = float(self.loss(kind, s, t))
            _, metric = agreement(spec, [x.numpy() for x in t], [x.numpy() for x in s])
            return metric, val_loss

        if state["epoch"] == 0 and not state["history"]:
            m0, l0 = evaluate()
            state["best_score"] = [m0, -l0]
            state["history"].append({"epoch": 0, "val_metric": m0, "val_loss": l0})
        threads = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        n_batches = (len(tr) + cfg.batch_size - 1) // cfg.batch_size
        bar = Bar("distilling", cfg.epochs * n_batches, log=ctx.log)
        bar.done = state["epoch"] * n_batches
        try:
            with bar:
                while not state["done"] and state["epoch"] < cfg.epochs:
                    self._epoch(state, model, opt, samples, labels, tr, t_out, t_tok, kind, mask_at, bar, n_batches)
                    metric, val_loss = evaluate()
                    self._end_epoch(state, metric, val_loss)
                    if state["best_epoch"] == state["epoch"]:
                        best = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    self._save(ckfile, model, opt, best, state)
                    name = metric_of(spec.metric).label
                    bar.print(f"  distill epoch {state['epoch']}/{cfg.epochs}: val {name} {metric:.4f}, val loss "
                              f"{val_loss:.4f}" + ("  (best)" if state["best_epoch"] == state["epoch"] else ""))
                    after_epoch(state["epoch"])
        finally:
            torch.set_num_threads(threads)
        if state["bad_epochs"] > cfg.patience:
            ctx.notes.append(f"early stop after epoch {state['epoch']} (no improvement for {cfg.patience + 1} epochs)")
        model.load_state_dict(best)
        ctx.notes.append(f"{kind} loss on {len(tr)} training / {len(va)} validation samples ({source}); "
                         f"best epoch {state['best_epoch']}, val metric {state['best_score'][0]:.4f}; "
                         f"checkpoint {ckfile}")
        student.module = model.eval()
        return student

    def _epoch(self, state, model, opt, samples, labels, tr, t_out, t_tok, kind, mask_at, bar, n_batches):
        import torch
        cfg = self.cfg
        epoch = state["epoch"] + 1
        torch.manual_seed(cfg.seed + epoch)          # dropout etc.: deterministic per epoch → resumable
        order = np.random.default_rng(cfg.seed + epoch).permutation(tr)
        model.train()
        for b in range(n_batches):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            batch = stack(samples, idx, mask_at)
            target = torch.cat([t_out[i] for i in idx])
            if t_tok is None:
                y = torch.from_numpy(labels[idx]) if labels is not None else None
                loss = self.loss(kind, first(model(*batch)), target, y)
            else:
                hidden = model.tokens(*batch)
                loss = (self.loss(kind, model.pool(hidden, batch[mask_at]), target)
                        + token_loss(hidden, [t_tok[i] for i in idx], batch[mask_at]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.advance(description=f"distill epoch {epoch}/{cfg.epochs}")

    def _end_epoch(self, state, metric, val_loss) -> None:
        """Record the epoch; best / early-stop bookkeeping (the score: val metric, then −val loss)."""
        epoch = state["epoch"] + 1
        score = [metric, -val_loss]
        state["history"].append({"epoch": epoch, "val_metric": metric, "val_loss": val_loss})
        if score > state["best_score"]:
            state.update(best_score=score, best_epoch=epoch, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        state["epoch"] = epoch
        if state["bad_epochs"] > self.cfg.patience or epoch >= self.cfg.epochs:
            state["done"] = True

    @staticmethod
    def _save(path: Path, model, opt, best, state) -> None:
        import torch
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "best": best,
                    "state": json.dumps(state)}, tmp)
        os.replace(tmp, path)
