"""Real architectures as they ship: spec inference, output preservation and planted recovery.

Each catalogue case (``permalign.testing.catalogue``) is built with random weights at a tiny
size. torchvision and timm cases run where those libraries import (they do not beside the
pinned CPU torch: ``bench/realarch.py`` runs them in a separate venv and commits the table);
here they are skipped with the import error as the reason.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import catalogue_model
from permalign.testing import CASES, run_case

# Cases known to fail with today's inference rules, and why. strict: a fix makes the test
# pass, and then this entry must go. (Issue 10 items 2-6 are fixed: BEiT, Mixtral, MNASNet,
# torchvision Swin/MaxViT, Mamba, ShuffleNet and timm Swin pass.)
KNOWN: dict[str, str] = {}

# a few cases of each kind run in the default suite; the rest are marked slow
DEFAULT = {"transformers/vit", "transformers/bert", "transformers/mobilenet_v2",
           "transformers/convnext", "transformers/llama", "transformers/t5",
           "torchvision/resnet18", "torchvision/mobilenet_v2", "timm/vit", "timm/mixer",
           "transformers/beit", "transformers/mamba", "transformers/mixtral",
           "torchvision/swin", "torchvision/mnasnet", "torchvision/shufflenet", "timm/swin",
           "transformers/gpt_oss", "transformers/qwen2_moe"}


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


class Versioned(nn.Module):
    """MNASNet-style: loading reads the module version from the state dict's ``_metadata``."""

    _version = 2

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 3)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args):
        version = local_metadata.get("version")
        if version not in (1, 2):
            raise ValueError(f"version should be set to 1 or 2 instead of {version}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_state_dict_metadata_survives():
    """apply_permutation, lerp_state, mean_state and REPAIR keep ``_metadata``: their results
    load into a module that needs its version (fails if any drops it)."""
    from permalign.infer import infer_spec
    from permalign.permutation import apply_permutation, random_permutation
    from permalign.repair import Repairer
    from permalign.statedict import lerp_state, mean_state
    torch.manual_seed(0)
    model, other = Versioned().eval(), Versioned().eval()
    x = torch.randn(32, 4)
    spec = infer_spec(model, x)
    state_a, state_b = model.state_dict(), other.state_dict()
    permuted = apply_permutation(spec, random_permutation(spec, torch.Generator().manual_seed(0)),
                                 state_a)
    results = {"apply_permutation": permuted, "lerp_state": lerp_state(state_a, state_b, 0.5),
               "mean_state": mean_state([state_a, state_b]),
               "repair": Repairer(model, spec, state_a, state_b, x)(0.5)}
    for name, state in results.items():
        work = Versioned()
        work.load_state_dict(state)  # raises ValueError without the metadata
        assert work.fc1.weight.shape == (6, 4), name
    work.load_state_dict(permuted)
    with torch.no_grad():
        torch.testing.assert_close(work(x), model(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["transformers/bert", "transformers/gpt2", "transformers/llama",
                                  "transformers/albert", "transformers/mamba",
                                  "transformers/vit"])
def test_activation_matching_recovers_planted_copies(name):
    """--method activation on models whose attention heads and within-head axes no
    Linear/Conv consumes: those groups are observed where probing finds them, with the repeats
    another group orders (a head's positions) sorted; ALBERT calls one layer at every depth
    (its inputs are paired call by call); Mamba's projections run without their modules'
    forward (observed nowhere: matched by sorted weights, and named in the result)."""
    from permalign.data import Dataset
    from permalign.infer import infer_spec
    from permalign.match.activation import activation_matching
    from permalign.permutation import apply_permutation, random_permutation
    model, inputs, kwargs = catalogue_model(name)
    spec = infer_spec(model, inputs, example_kwargs=kwargs)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    shuffled = apply_permutation(spec, random_permutation(spec, torch.Generator().manual_seed(1)),
                                 state)
    x = inputs[0].repeat(4, *[1] * (inputs[0].dim() - 1))  # (8, ...) examples
    if x.is_floating_point():
        x = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    labels = torch.zeros(len(x), dtype=torch.long)
    result = activation_matching(spec, state, shuffled, model=model,
                                 data=Dataset("probe", x, labels, x, labels, num_classes=2))
    back = apply_permutation(spec, result.perm, shuffled)
    assert all(torch.equal(back[k], state[k]) for k in state)
    assert bool(result.info["unobserved"]) == (name == "transformers/mamba")
