"""Shared fixtures: a tiny prepared dataset built once per test session through the real stages."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS", "0")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def smoke_spec():
    from brainray.config import load_spec

    return load_spec("smoke")


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, smoke_spec):
    """The smoke preset's dataset: real emulator plays, simulated brain, trained VQ-VAE."""
    from brainray.prepare import prepare

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("data") / smoke_spec.data_key()
    return prepare(smoke_spec, root, log=lambda msg: None)


@pytest.fixture
def trial_config(tiny_dataset, smoke_spec):
    import dataclasses

    return {
        **smoke_spec.axes.reference,
        "dataset": str(tiny_dataset.root),
        "train": dataclasses.asdict(smoke_spec.train),
    }
