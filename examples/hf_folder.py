"""Hugging Face folders: make two tiny GPT-2 folders, train each on a text file, align one to
the other with the permalign command, load the result with from_pretrained, and compare the
next-token loss barriers.

    python examples/hf_folder.py [WORK_DIR]

Everything stays local: the folders come from save_pretrained of a small random config.
"""
import shlex
import sys
from pathlib import Path

import torch
import transformers

from permalign.cli import main

transformers.logging.set_verbosity_error()
work = Path(sys.argv[1] if len(sys.argv) > 1 else "hf-example")
work.mkdir(exist_ok=True)
text = work / "text.txt"  # any UTF-8 text; here this project's README
text.write_text((Path(__file__).resolve().parent.parent / "README.md").read_text())


def permalign(command: str) -> None:
    print(f"$ permalign {command}", flush=True)
    if main(shlex.split(command) + ["--quiet", "--force"]) != 0:
        sys.exit(1)


config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256,
                                 n_positions=64)
for seed in (0, 1):
    torch.manual_seed(seed)  # two random initialisations
    transformers.GPT2LMHeadModel(config).save_pretrained(work / f"init-{seed}")
    permalign(f"train --model hf:{work}/init-{seed} --dataset text:{text} --epochs 2 "
              f"--lr 3e-3 --seed {seed} --out {work}/model-{seed}")
permalign(f"align {work}/model-0 {work}/model-1 --out {work}/aligned")

model_b = transformers.GPT2LMHeadModel.from_pretrained(work / "model-1").eval()
aligned = transformers.GPT2LMHeadModel.from_pretrained(work / "aligned").eval()
ids = torch.randint(0, 256, (1, 32), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    change = (model_b(ids).logits - aligned(ids).logits).abs().max().item()
print(f"aligned folder loads with from_pretrained; largest change of B's logits: {change:.2g}")
for name, other in (("naive", "model-1"), ("aligned", "aligned")):
    permalign(f"interpolate {work}/model-0 {work}/{other} --dataset text:{text} "
              f"--points 5 --out {work}/{name}.json")
