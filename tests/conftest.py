"""Shared fixtures: small trained models on the bundled digits, built once per session."""
from __future__ import annotations

import pytest
import torch

from permalign.data import load_digits
from permalign.train import TrainConfig
from permalign.models import resolve_model
from permalign.workflow import train_from_seed

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def digits():
    return load_digits()


@pytest.fixture(scope="session")
def trained(digits):
    """``trained(model_string, seed, epochs)`` -> (model, spec, state), cached."""
    cache: dict = {}

    def get(model_string: str, seed: int = 0, epochs: int = 10):
        key = (model_string, seed, epochs)
        if key not in cache:
            state = train_from_seed(model_string, digits, TrainConfig(epochs=epochs, seed=seed),
                                    progress=False)
            model, spec = resolve_model(model_string, digits.input_shape, digits.num_classes)
            cache[key] = (model, spec, state)
        return cache[key]
    return get


def same_perm(found, truth) -> bool:
    return set(found) == set(truth) and all(torch.equal(torch.as_tensor(found[k]), truth[k])
                                            for k in truth)


def catalogue_model(name: str):
    """``(model, inputs, kwargs)`` of a catalogue case (weights from seed 0), skipping the test
    where the case's library does not import here."""
    from permalign.testing import CASES
    case = CASES[name]
    if case.unavailable():
        pytest.skip(case.unavailable())
    inputs, kwargs = case.inputs()
    return case.model(0), inputs, kwargs
