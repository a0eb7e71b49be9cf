"""Sphinx configuration of the API reference: ``sphinx-build -W --keep-going docs/api OUT``.

Everything is driven by the code: the index documents ``tornws.__all__`` (autodoc follows a
module's ``__all__``), and each public module (one with an ``__all__``) gets a page generated
here at build time, listing its names that ``tornws`` does not re-export.

Why Sphinx (autodoc, napoleon) rather than MkDocs with mkdocstrings: it is the better kept of
the two for this (a core team and releases since 2008, autodoc part of Sphinx itself rather than
a plugin chain), follows ``__all__`` natively, and reads Google-style docstrings as they are.
"""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import sys
import textwrap
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

import tornws  # noqa: E402

project = "tornws"
release = version = tornws.__version__
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
# "Attributes:" sections as fields: as directives they would describe a NamedTuple's fields a
# second time (autodoc lists them as members too).
napoleon_use_ivar = True
# Only tornws's own docstrings: inherited ones (picows's listener hooks in tornws.bench.load)
# point at targets this reference does not have.
autodoc_inherit_docstrings = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_class_signature = "separated"
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []
# Annotations name Tornado's and the stdlib's types, which this reference does not document.
nitpicky = False


def public_modules() -> list[str]:
    """Every importable module of the package that declares ``__all__`` (not ``__main__``)."""
    names = []
    for info in pkgutil.walk_packages(tornws.__path__, "tornws."):
        if any(part.startswith("_") for part in info.name.split(".")[1:]):
            continue
        module = importlib.import_module(info.name)
        if hasattr(module, "__all__"):
            names.append(info.name)
    return sorted(names)


def _write(path: str, text: str) -> None:
    old = None
    if os.path.exists(path):
        with open(path) as file:
            old = file.read()
    if old != text:  # unchanged files keep their time: Sphinx rebuilds only what changed
        with open(path, "w") as file:
            file.write(text)


def write_module_pages() -> None:
    folder = os.path.join(HERE, "modules")
    os.makedirs(folder, exist_ok=True)
    modules = public_modules()
    for name in modules:
        title = f"``{name}``"
        _write(
            os.path.join(folder, f"{name}.rst"),
            f"{title}\n{'=' * len(title)}\n\n"
            f".. automodule:: {name}\n   :members:\n   :undoc-members:\n   :show-inheritance:\n",
        )
    for stale in set(os.listdir(folder)) - {f"{name}.rst" for name in modules}:
        os.remove(os.path.join(folder, stale))
    entries = "".join(f"   modules/{name}\n" for name in modules)
    _write(
        os.path.join(HERE, "modules.rst"),
        "Modules\n=======\n\n"
        "Each module's own public names; those ``tornws`` re-exports are on the first page.\n\n"
        f".. toctree::\n   :maxdepth: 1\n\n{entries}",
    )


def write_exported_data() -> None:
    """``exported_data.inc``: an entry for each constant of ``tornws.__all__`` (automodule
    leaves out data that a module imports), with the ``#:`` comment of the module that
    defines it."""
    from sphinx.pycode import ModuleAnalyzer

    entries = []
    for name in tornws.__all__:
        value = getattr(tornws, name)
        if name == "__version__" or inspect.isclass(value) or inspect.isroutine(value):
            continue
        text, origin = "", ""
        for module in public_modules():
            if name in getattr(importlib.import_module(module), "__all__", ()):
                found = ModuleAnalyzer.for_module(module).find_attr_docs().get(("", name))
                if found:
                    text, origin = " ".join(line.strip() for line in found), module
                    break
                origin = origin or module
        body = textwrap.indent(f"{text}\n\nDefined in :mod:`{origin}`.", "   ")
        entries.append(f".. py:data:: {name}\n   :module: tornws\n\n{body}\n")
    _write(os.path.join(HERE, "exported_data.inc"), "\n".join(entries))


_REEXPORTED = {id(getattr(tornws, name)) for name in tornws.__all__ if name != "__version__"}


def skip_reexported(app: Any, what: str, name: str, obj: Any, *_: Any) -> bool | None:
    """On module pages, skip what ``tornws`` re-exports (documented once, as ``tornws.X``)."""
    on_module_page = getattr(app.env, "docname", "").startswith("modules/")
    if what == "module" and on_module_page and id(obj) in _REEXPORTED:
        return True
    return None


def setup(app: Any) -> None:
    write_module_pages()
    write_exported_data()
    app.connect("autodoc-skip-member", skip_reexported)
