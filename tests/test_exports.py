"""Keep __all__ honest: every public module lists what it defines, and tornws re-exports it."""

from __future__ import annotations

import importlib
import inspect

import pytest

import tornws

PUBLIC_MODULES = [
    "tornws.app",
    "tornws.admission",
    "tornws.auth",
    "tornws.bench",
    "tornws.bench.load",
    "tornws.bench.raw_tornado",
    "tornws.bench.report",
    "tornws.bench.subjects",
    "tornws.broker",
    "tornws.chat",
    "tornws.cli",
    "tornws.client",
    "tornws.connection",
    "tornws.deflate",
    "tornws.demo",
    "tornws.exceptions",
    "tornws.frames",
    "tornws.handlers",
    "tornws.metrics",
    "tornws.node",
    "tornws.page",
    "tornws.redis_broker",
    "tornws.registry",
    "tornws.server",
    "tornws.stats",
    "tornws.transport",
]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_exports_exist(name: str) -> None:
    """Every name in a module's __all__ is defined in it."""
    module = importlib.import_module(name)
    missing = [item for item in module.__all__ if not hasattr(module, item)]
    assert missing == []


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_public_classes_and_functions_are_exported(name: str) -> None:
    """Every public class or function defined in a module is in its __all__."""
    module = importlib.import_module(name)
    defined = {
        item
        for item, value in vars(module).items()
        if not item.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == name
    }
    assert defined - set(module.__all__) == set()


def test_top_level_exports() -> None:
    """tornws's __all__ names exist and are sorted; the package has a version."""
    assert all(hasattr(tornws, item) for item in tornws.__all__)
    assert tornws.__all__ == sorted(tornws.__all__)
    assert tornws.__version__.count(".") == 2
