"""Fixtures for the preset and suite tests: the tiny Gemma 2 and its embedded token data."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import datasets
import pytest

from saelens_gemmascope.demo.tiny_model import TinyGemma2, build_tiny_gemma2
from saelens_gemmascope.host import load_plugins


@pytest.fixture(scope="session", autouse=True)
def plugins_loaded() -> None:
    """Presets, models and the recipe's training architecture, through the plugin host."""
    assert "tiny-gemma-2/res/layer_1/width_256" in load_plugins().presets


@pytest.fixture(scope="session")
def tiny() -> TinyGemma2:
    return build_tiny_gemma2(seed=0)


@pytest.fixture(scope="session")
def token_data(tiny: TinyGemma2) -> datasets.Dataset:
    from saelens_gemmascope.data import stdlib_token_dataset

    return stdlib_token_dataset(tiny.tokenizer, 128)


@pytest.fixture(scope="session")
def cli() -> Callable[[list[str]], Any]:
    """Runs ``gemmascope presets/train`` through this package's ``add_commands``."""
    from saelens_gemmascope.cli import train

    def run(argv: list[str]) -> Any:
        parser = argparse.ArgumentParser(prog="gemmascope")
        train.add_commands(parser.add_subparsers())
        args = parser.parse_args(argv)
        return args.handler(args)

    return run
