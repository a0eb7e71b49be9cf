"""Keep __all__ honest: every public module lists what it defines, and tornws re-exports it."""

from __future__ import annotations

import importlib
import inspect

import pytest

import tornws

PUBLIC_MODULES = [
    "tornws.api",
    "tornws.app",
    "tornws.admission",
    "tornws.auth",
    "tornws.bench",
    "tornws.bench.bare_websockets",
    "tornws.bench.counts",
    "tornws.bench.failover",
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
    "tornws.heap",
    "tornws.hub",
    "tornws.live",
    "tornws.metrics",
    "tornws.node",
    "tornws.page",
    "tornws.publisher",
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


#: The modules whose public names make up tornws's top level (its docstring lists them).
TOP_LEVEL_MODULES = [
    "tornws.app",
    "tornws.broker",
    "tornws.chat",
    "tornws.demo",
    "tornws.exceptions",
    "tornws.frames",
    "tornws.handlers",
    "tornws.hub",
    "tornws.live",
    "tornws.node",
    "tornws.publisher",
    "tornws.registry",
    "tornws.server",
    "tornws.stats",
]


def test_top_level_exports() -> None:
    """tornws's __all__ is exactly the union of its top-level modules' __all__ (no
    name in two of them), each the very object of its module; and a version."""
    combined = [
        name for module in TOP_LEVEL_MODULES for name in importlib.import_module(module).__all__
    ]
    assert len(combined) == len(set(combined))
    assert set(tornws.__all__) == {*combined, "__version__"}
    for module_name in TOP_LEVEL_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            assert getattr(tornws, name) is getattr(module, name), name
        assert f":mod:`~{module_name}`" in (tornws.__doc__ or ""), module_name
    assert len(tornws.__all__) == len(set(tornws.__all__))  # (its order: ruff's RUF022)
    assert tornws.__version__.count(".") == 2


def test_every_exception_is_a_tornws_error_in_the_drawn_tree() -> None:
    """Every exception class tornws defines derives from TornwsError and is drawn in
    the tree of tornws.exceptions' docstring."""
    import pkgutil

    import tornws.exceptions

    found = {}
    for info in pkgutil.walk_packages(tornws.__path__, "tornws."):
        if info.name == "tornws.__main__":
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__.startswith("tornws")
            ):
                found[value.__name__] = value
    assert {"TornwsError", "HandshakeError", "TicketError", "CheckFailed"} <= set(found)
    doc = tornws.exceptions.__doc__ or ""
    for name, cls in found.items():
        assert issubclass(cls, tornws.TornwsError), name
        assert f"── {name}" in doc or name == "TornwsError", name
