"""The README stays true: its code is the examples' code, its test command is CI's."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import ROOT

README = (Path(ROOT) / "README.md").read_text()
CI = (Path(ROOT) / ".ci" / "run").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.DOTALL)


def test_readme_python_snippets_are_in_examples() -> None:
    """Every Python snippet in the README stands verbatim in an example (which a test runs)."""
    sources = "\n".join(path.read_text() for path in (Path(ROOT) / "examples").glob("*.py"))
    snippets = blocks("python")
    assert len(snippets) >= 4
    for snippet in snippets:
        assert snippet in sources, f"README snippet not found in examples/:\n{snippet}"


def test_readme_test_command_is_what_ci_runs() -> None:
    """The README's test command (after the venv part) is a line of .ci/run."""
    fresh = [line for block in blocks("sh") for line in block.splitlines() if "pytest" in line]
    command = fresh[0].split("&& ", 2)[-1]
    assert command == "pip install -e '.[test]' && python -m pytest"
    assert command in CI.splitlines()


def test_readme_serve_flags_exist() -> None:
    """Every flag the README shows for `tornws serve` and `tornws client` is accepted."""
    from tornws.cli import build_parser

    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in ("serve", "client"):
        usage = re.search(rf"tornws {name} (\[.*?)(?:\n\n|```)", README, flags=re.DOTALL)
        assert usage, name
        shown = set(re.findall(r"--[a-z-]+", usage.group(1)))
        known = {opt for action in subcommands[name]._actions for opt in action.option_strings}
        assert shown and shown <= known, shown - known
