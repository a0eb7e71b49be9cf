"""One object of a kind per Tornado application, kept in its settings (the Registry, the Node)."""

from __future__ import annotations

from typing import Any, TypeVar

T = TypeVar("T")


def kept(application: Any, key: str, cls: type[T]) -> T:
    """``application.settings[key]``, a ``cls`` made on first use.

    Raises:
        TypeError: the setting holds something else (it names what).
    """
    settings: dict[str, Any] = application.settings
    value = settings.get(key)
    if value is None:
        value = settings[key] = cls()
    elif not isinstance(value, cls):
        raise TypeError(
            f"application.settings[{key!r}] is a {type(value).__name__}, "
            f"not a tornws {cls.__name__}"
        )
    return value
