"""Silence third-party chatter (converter progress bars, TF/absl logs, version warnings) unless --verbose."""
from __future__ import annotations

import logging
import os
import warnings


def quiet(verbose: bool) -> None:
    if verbose:
        return
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GLOG_minloglevel", "3")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TQDM_DISABLE", "1")          # coremltools / ai-edge-quantizer progress bars
    os.environ["POCKETML_QUIET"] = "1"
    os.environ.setdefault("HF_HUB_OFFLINE", "1") if os.environ.get("POCKETML_OFFLINE", "1") == "1" else None
    warnings.filterwarnings("ignore")
    for name in ("coremltools", "torch", "torch.onnx", "onnxscript", "root", "absl", "torchao", "transformers",
                 "onnxruntime", "onnxruntime.quantization", "onnxruntime.quantization.matmul_nbits_quantizer"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
