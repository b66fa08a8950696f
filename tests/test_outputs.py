"""Choosing which outputs must be preserved (``infer_spec(..., outputs=...)``, ``--outputs``):
outputs left out may come out permuted, so the axes they carry become free."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from permalign.cli import main
from permalign.errors import SpecError
from permalign.infer import infer_spec
from permalign.permutation import apply_permutation, check_spec, random_permutation
from conftest import catalogue_model
from test_infer import free_places

FACTORY = '''
import torch
from torch import nn


class WithFeatures(nn.Module):
    """Logits and the hidden features they come from, as a tuple."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        features = self.body(x)
        return self.head(features), features


def build():
    torch.manual_seed(0)
    return WithFeatures()
'''


def test_hidden_states_left_out_free_the_residual_stream():
    """GPT-2 called with output_hidden_states=True returns the residual stream, which fixes
    it; preserving only the logits frees it again, and a permutation then keeps the logits
    (through load_state_dict) while the hidden states come out permuted."""
    model, inputs, kwargs = catalogue_model("transformers/gpt2")
    kwargs = {**kwargs, "output_hidden_states": True}
    every = infer_spec(model, inputs, example_kwargs=kwargs)
    logits_only = infer_spec(model, inputs, example_kwargs=kwargs, outputs=["logits"])
    assert "transformer.wte.weight:1" in every.fixed
    assert "transformer.wte.weight:1" in free_places(logits_only)
    assert len(logits_only.groups) == len(every.groups) + 1
    perm = random_permutation(logits_only, torch.Generator().manual_seed(0))
    moved = type(model)(model.config).eval()
    moved.load_state_dict(apply_permutation(logits_only, perm, model.state_dict()))
    with torch.no_grad():
        before, after = model(*inputs, **kwargs), moved(*inputs, **kwargs)
    torch.testing.assert_close(after.logits, before.logits, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(after.hidden_states[1], before.hidden_states[1], atol=1e-3)
    with pytest.raises(SpecError, match="outputs changed"):
        check_spec(model, logits_only, inputs, example_kwargs=kwargs)


def test_router_logits_left_out_let_the_experts_move():
    """Mixtral with output_router_logits=True returns the router's scores over the experts,
    so the experts cannot move; preserving only the logits gives every layer its carrier."""
    model, inputs, kwargs = catalogue_model("transformers/mixtral")
    kwargs = {**kwargs, "output_router_logits": True}
    assert not infer_spec(model, inputs, example_kwargs=kwargs).carried()
    spec = infer_spec(model, inputs, example_kwargs=kwargs, outputs=["logits"])
    assert len(spec.carried()) == model.config.num_hidden_layers


def test_unknown_output_names_are_one_line_errors():
    model, inputs, kwargs = catalogue_model("transformers/gpt2")
    with pytest.raises(SpecError, match="has no 'logit'; it has 'logits'") as info:
        infer_spec(model, inputs, example_kwargs=kwargs, outputs=["logit"])
    assert "\n" not in str(info.value)
    plain = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with pytest.raises(SpecError, match="returns one tensor, so there are no outputs"):
        infer_spec(plain, torch.randn(3, 4), outputs=["logits"])
    assert len(infer_spec(plain, torch.randn(3, 4)).groups) == 1


def test_cli_outputs_flag_on_a_tuple_output(tmp_path, monkeypatch, capsys):
    """--outputs 0 keeps only the first of a factory model's (logits, features): the hidden
    layer it returns becomes a group; a position it lacks is one line, exit 2."""
    (tmp_path / "withfeatures.py").write_text(FACTORY)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    args = ["spec", "--model", "withfeatures:build", "--input-shape", "1,8,8",
            "--num-classes", "10"]
    assert main(args) == 0
    every = capsys.readouterr().out
    assert main([*args, "--outputs", "0"]) == 0
    logits_only = capsys.readouterr().out
    assert "0 permutation groups" in every and "1 permutation groups" in logits_only
    assert main([*args, "--outputs", "0,5"]) == 2
    err = capsys.readouterr().err
    assert "not one of its positions 0..1" in err or "has no" in err
    assert len(err.strip().splitlines()) == 1


class DictOutputs(nn.Module):
    """``{"aux": None, "0": logits, "hidden": features}``: an entry without a tensor and a key
    made of digits."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        features = self.body(x)
        return {"aux": None, "0": self.head(features), "hidden": features}


def test_output_names_resolve_or_fail_in_one_line():
    """A key made of digits is found as a key; an entry holding no tensor, an empty list, a
    boolean or a nested list are refused in one line; a single string is one name."""
    from permalign.diagnose import output_change
    torch.manual_seed(0)
    model, x = DictOutputs().eval(), torch.randn(5, 4)
    spec = infer_spec(model, x, outputs=["0"])  # the logits: the hidden layer is free
    assert len(spec.groups) == 1
    assert len(infer_spec(model, x, outputs="0").groups) == 1
    for bad, message in ((["aux"], "holds no tensor"), ([], "at least one output"),
                         ([True], "neither a key nor a position"),
                         ([["0"]], "neither a key nor a position"), (["nope"], "has no 'nope'")):
        with pytest.raises(SpecError, match=message) as info:
            infer_spec(model, x, outputs=bad)
        assert "\n" not in str(info.value)
    hidden_only = infer_spec(model, x, outputs=["hidden"])  # the logits' classes may move
    assert list(hidden_only.groups) == ["head.weight:0"] and "body.0.weight:0" in \
        hidden_only.fixed
    change = output_change(model, spec, model.state_dict(), (x,), {}, outputs=["0"])
    assert change["preserved"]  # diagnose compares only the chosen outputs
    assert not output_change(model, spec, model.state_dict(), (x,), {})["preserved"]


class KeywordCall(nn.Module):
    """A Linear called with its input as a keyword (``self.l2(input=h)``)."""

    def __init__(self):
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.l2(input=torch.relu(self.l1(x)))


def test_activation_matching_reads_keyword_inputs():
    from permalign.data import Dataset
    from permalign.match.activation import activation_matching
    from permalign.permutation import invert
    torch.manual_seed(0)
    model, x = KeywordCall().eval(), torch.randn(64, 4)
    spec = infer_spec(model, x[:2])
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    planted = random_permutation(spec, torch.Generator().manual_seed(1))
    labels = torch.zeros(64, dtype=torch.long)
    result = activation_matching(spec, state, apply_permutation(spec, planted, state),
                                 model=model, data=Dataset("kw", x, labels, x, labels,
                                                           num_classes=3))
    assert all(torch.equal(result.perm[g], invert(planted, spec)[g]) for g in spec.groups)


def test_zoo_spec_refuses_outputs_without_infer(capsys):
    """A zoo model's hand-written spec is not inferred: --outputs there is refused in one line
    rather than silently ignored."""
    code = main(["spec", "--model", "mlp:depth=2,width=16", "--outputs", "nope"])
    err = capsys.readouterr().err
    assert code == 2 and "--infer" in err and len(err.strip().splitlines()) == 1
