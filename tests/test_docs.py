"""The API reference (docs/api, Sphinx autodoc) builds without a warning and documents the API.

Skips without Sphinx (the ``docs`` or ``test`` extra); TORNWS_TEST_REQUIRE_ALL=1 makes that a
failure, as in .ci/run.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_exports import PUBLIC_MODULES

import tornws

from conftest import ROOT

SPHINX_BUILD = [sys.executable, "-m", "sphinx", "-E", "-W", "--keep-going", "-q", "-b", "html"]


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """One ``sphinx-build -E -W --keep-going -b html docs/api`` run (what .ci/run builds)."""
    pytest.importorskip("sphinx", reason="the API reference needs Sphinx: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("api")
    result = subprocess.run(
        [*SPHINX_BUILD, str(Path(ROOT) / "docs" / "api"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return result, out


def test_docs_build_without_warnings(built: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    """sphinx-build -W --keep-going succeeds: every docstring is valid reStructuredText."""
    result, _ = built
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr


def test_docs_document_every_exported_name(
    built: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """Every name of tornws.__all__ has its entry (an anchor tornws.<name>) on the index page."""
    _, out = built
    index = (out / "index.html").read_text()
    missing = [name for name in tornws.__all__ if f'id="tornws.{name}"' not in index]
    assert missing == [], f"not in the API reference: {missing}"


def test_docs_have_a_page_per_public_module(
    built: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """Each public module (tests/test_exports.py's list) has its page under modules/."""
    _, out = built
    missing = [name for name in PUBLIC_MODULES if not (out / "modules" / f"{name}.html").is_file()]
    assert missing == []
