"""Reference models with hand-written permutation specs, built from short strings.

``build("mlp:depth=3,width=512", input_shape=(1, 28, 28), num_classes=10)`` returns
``(model, spec)``. Families: ``mlp`` (depth, width, norm), ``vgg11`` / ``vgg16`` (width, norm),
``resnet20`` (width, norm, blocks). ``norm`` is ``none`` | ``ln`` | ``bn``.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import PermalignError
from ..spec import PermutationSpec
from .mlp import MLP, build_mlp
from .norms import ChannelLayerNorm, parse_norm
from .resnet import ResNet20, build_resnet20
from .vgg import VGG, build_vgg

Builder = Callable[..., tuple[nn.Module, PermutationSpec]]

# family -> (builder, {option: (type, default)})
FAMILIES: dict[str, tuple[Builder, dict[str, tuple[type, Any]]]] = {
    "mlp": (build_mlp, {"depth": (int, 3), "width": (int, 512), "norm": (str, "none")}),
    "vgg11": (lambda *a, **k: build_vgg(*a, depth=11, **k),
              {"width": (float, 1.0), "norm": (str, "none")}),
    "vgg16": (lambda *a, **k: build_vgg(*a, depth=16, **k),
              {"width": (float, 1.0), "norm": (str, "none")}),
    "resnet20": (build_resnet20, {"width": (int, 1), "norm": (str, "ln"),
                                  "blocks_per_stage": (int, 3)}),
}

SPATIAL_FAMILIES = {"vgg11", "vgg16", "resnet20"}
MAX_OPTION = 1e6  # depths, widths and multipliers beyond this only exhaust memory


def parse_model_string(text: str) -> tuple[str, dict[str, Any]]:
    """``"resnet20:width=4,norm=ln"`` -> ``("resnet20", {"width": 4, "norm": "ln", ...})``."""
    family, _, rest = str(text).strip().partition(":")
    family = family.lower()
    if family not in FAMILIES:
        raise PermalignError(f"unknown model family {family!r} in {text!r}; use one of "
                             f"{', '.join(FAMILIES)} (e.g. mlp:depth=3,width=512 or "
                             "resnet20:width=4,norm=ln), or package.module:function")
    options_spec = FAMILIES[family][1]
    options = {name: default for name, (_, default) in options_spec.items()}
    given: set[str] = set()
    for item in filter(None, (p.strip() for p in rest.split(","))):
        name, eq, value = item.partition("=")
        name = name.strip().replace("-", "_")
        if not eq or name not in options_spec:
            raise PermalignError(f"bad option {item!r} in model {text!r}; {family} takes "
                                 f"{', '.join(f'{k}=...' for k in options_spec)}")
        if name in given:
            raise PermalignError(f"option {name} given twice in model {text!r}")
        given.add(name)
        kind = options_spec[name][0]
        try:
            options[name] = kind(value.strip())
        except ValueError:
            raise PermalignError(f"option {name} of model {text!r} must be {kind.__name__}, "
                                 f"got {value!r}") from None
        if kind in (int, float) and not 0 < options[name] <= MAX_OPTION:
            raise PermalignError(f"option {name} of model {text!r} must be a positive number "
                                 f"up to {MAX_OPTION:g}, got {value.strip()!r}")
    if "norm" in options:
        options["norm"] = parse_norm(options["norm"])
    return family, options


def build(name: str, *, input_shape: tuple[int, ...], num_classes: int
          ) -> tuple[nn.Module, PermutationSpec]:
    """Build a zoo model and its hand-written spec from a model string."""
    family, options = parse_model_string(name)
    input_shape = tuple(int(s) for s in input_shape)
    if family in SPATIAL_FAMILIES and len(input_shape) != 3:
        raise PermalignError(f"{family} needs an image input shape C,H,W; got "
                             f"{','.join(map(str, input_shape))}")
    return FAMILIES[family][0](input_shape, num_classes, **options)


__all__ = ["build", "parse_model_string", "FAMILIES", "MLP", "VGG", "ResNet20",
           "ChannelLayerNorm", "build_mlp", "build_vgg", "build_resnet20"]
