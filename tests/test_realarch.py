"""Real architectures as they ship: spec inference, output preservation and planted recovery.

Each catalogue case (``permalign.testing.catalogue``) is built with random weights at a tiny
size. torchvision and timm cases run where those libraries import (they do not beside the
pinned CPU torch: ``bench/realarch.py`` runs them in a separate venv and commits the table);
here they are skipped with the import error as the reason.
"""
from __future__ import annotations

import pytest
import torch

from permalign.testing import CASES, run_case

# Cases known to fail with today's inference rules, and why (issue 10 items 2-6). strict: a
# fix makes the test pass, and then this entry must go.
KNOWN = {
    "transformers/beit": "no rule for aten.meshgrid (relative position index built in forward)",
    "transformers/mixtral": "no rule for aten.histc (grouped-mm expert routing), issue 10 item 6",
    "torchvision/mnasnet": "apply_permutation drops state-dict _metadata, issue 10 item 3",
    "torchvision/swin": "int relative_position_index buffer becomes a group, issue 10 item 2",
    "torchvision/maxvit": "int relative_position_index buffer becomes a group, issue 10 item 2",
    "transformers/mamba": "zeros() fixes the SSM channels, issue 10 item 5",
    "torchvision/shufflenet": "reshape fallback fixes pass-through channels, issue 10 item 4",
    "timm/swin": "reshape fallback fixes the residual stream, issue 10 item 4",
}

# a few cases of each kind run in the default suite; the rest are marked slow
DEFAULT = {"transformers/vit", "transformers/bert", "transformers/mobilenet_v2",
           "transformers/convnext", "transformers/llama", "transformers/t5",
           "torchvision/resnet18", "torchvision/mobilenet_v2", "timm/vit", "timm/mixer"}


def _param(name: str):
    case = CASES[name]
    marks = []
    reason = case.unavailable()
    if reason:
        marks.append(pytest.mark.skip(reason=reason))
    if case.slow or name not in DEFAULT:
        marks.append(pytest.mark.slow)
    if name in KNOWN:
        marks.append(pytest.mark.xfail(reason=KNOWN[name], strict=True))
    return pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", [_param(n) for n in CASES])
def test_real_architecture(name):
    """Inference works, the spec preserves outputs through load_state_dict, and the default
    weight-matching start recovers a planted permutation exactly."""
    report = run_case(CASES[name], starts=("auto",))
    assert report.failed is None, f"{report.failed}: {report.error}"  # incl. lost symmetries
    assert report.groups > 0
    outcome = report.matching["auto"]
    assert outcome.recovered, f"objective ratio {outcome.objective_ratio:.4f}"
    assert outcome.objective_ratio == pytest.approx(1.0, abs=1e-6)


def test_catalogue_covers_the_issue():
    """At least 45 architectures, of every kind the issue names."""
    kinds = {c.kind for c in CASES.values()}
    assert len(CASES) >= 45
    assert kinds >= {"cnn", "vision-transformer", "encoder", "decoder", "encoder-decoder",
                     "moe", "ssm"}
    traits = {t for c in CASES.values() for t in c.traits}
    assert traits >= {"residual", "grouped", "depthwise", "dense-concat", "channel-shuffle",
                      "squeeze-excite", "windowed-attention", "global-attention", "gqa",
                      "tied-embeddings", "alibi", "rotary", "mixture-of-experts"}


def test_constants_are_perturbed():
    """Norm weights and zero biases get distinct entries, so the output check can fail."""
    model = CASES["transformers/bert"].model()
    ln = model.bert.embeddings.LayerNorm
    assert ln.weight.std() > 0 and ln.bias.std() > 0
    again = CASES["transformers/bert"].model()
    assert torch.equal(again.bert.embeddings.LayerNorm.weight, ln.weight)  # seeded
