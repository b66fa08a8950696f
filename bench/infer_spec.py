"""Time and peak memory of spec inference on GPT-2-small- and ResNet-50-sized models.

    python bench/infer_spec.py [--out FILE]

Models are built from Hugging Face configs with random weights (no download). Reports the time
of ``infer_spec`` (torch.export + axis propagation) without and with the output check, the
number of groups, and the peak resident memory that inference adds beyond the built model.
"""
from __future__ import annotations

import argparse
import gc
import time
import warnings

import torch

from _common import emit, machine, table
from permalign.infer import infer_spec


def status(field: str) -> int:
    with open("/proc/self/status") as fh:
        line = next(ln for ln in fh if ln.startswith(field))
    return int(line.split()[1]) * 1024


def models():
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel, ResNetConfig, ResNetForImageClassification
    transformers.logging.set_verbosity_error()
    ids = torch.randint(0, 50257, (1, 64))
    yield ("GPT-2 small (12 x 768)", lambda: GPT2LMHeadModel(GPT2Config()), (ids,),
           {"use_cache": False})
    yield ("ResNet-50 (HF config)", lambda: ResNetForImageClassification(ResNetConfig()),
           (torch.randn(1, 3, 224, 224),), {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    rows = []
    for name, factory, inputs, kwargs in models():
        torch.manual_seed(0)
        model = factory().eval()
        params = sum(p.numel() for p in model.parameters())
        gc.collect()
        open("/proc/self/clear_refs", "w").write("5")
        before = status("VmRSS")
        start = time.perf_counter()
        spec = infer_spec(model, inputs, example_kwargs=kwargs, check=False)
        infer_s = time.perf_counter() - start
        peak = status("VmHWM") - before
        start = time.perf_counter()
        infer_spec(model, inputs, example_kwargs=kwargs, check=True)
        checked_s = time.perf_counter() - start
        rows.append([name, f"{params / 1e6:.1f}M", len(spec.groups), infer_s, checked_s,
                     f"{peak / 2**20:.0f} MiB"])
        del model
    emit(f"## Spec inference\n\nMachine: {machine()}\n\nCommand: `python bench/infer_spec.py`\n\n"
         + table(["model", "params", "groups", "infer s", "infer + check s",
                  "peak extra memory"], rows), args.out)


if __name__ == "__main__":
    main()
