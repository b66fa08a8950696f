"""A small helper to write permutation specs by layer rather than by tensor."""
from __future__ import annotations

from ..spec import Member, PermutationSpec
from .norms import norm_keys


class SpecBuilder:
    """Collects groups while the model's layers are described in order."""

    def __init__(self) -> None:
        self.spec = PermutationSpec()

    def group(self, name: str, size: int) -> str:
        self.spec.add_group(name, size)
        return name

    def _add(self, group: str | None, key: str, axis: int) -> None:
        if group is not None:
            self.spec.groups[group].members.append(Member(key, axis))

    def layer(self, prefix: str, in_group: str | None, out_group: str | None, *,
              bias: bool = True) -> None:
        """A linear or conv layer: weight axis 0 is out, axis 1 is in; the bias is out."""
        self._add(out_group, f"{prefix}.weight", 0)
        self._add(in_group, f"{prefix}.weight", 1)
        if bias:
            self._add(out_group, f"{prefix}.bias", 0)

    def norm(self, norm: str, prefix: str, group: str) -> None:
        for key in norm_keys(norm, prefix):
            self._add(group, key, 0)
