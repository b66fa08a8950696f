"""Real architectures as they ship (transformers, torchvision, timm) and a harness that checks
spec inference and matching on each: see :mod:`.catalogue` and :mod:`.harness`."""
from .catalogue import CASES, Case, available_cases
from .harness import CaseReport, run_case


__all__ = ["CASES", "Case", "available_cases", "CaseReport", "run_case"]
