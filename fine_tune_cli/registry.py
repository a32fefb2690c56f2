"""One small registry per concept (model, step, optimizer, scheduler, exporter, ...).

Recipes name registry keys, never import paths, so a recipe cannot run arbitrary code.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    """Return " did you mean 'x'?" for the closest choice, or "" if none is close."""
    close = difflib.get_close_matches(str(name), sorted(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


class Registry(Generic[T]):
    """Name → object map filled by a decorator; unknown names list the choices."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"duplicate {self.kind} name {name!r}")
            self._items[name] = obj
            return obj

        return decorate

    def add(self, name: str, obj: T) -> None:
        self.register(name)(obj)

    def unknown_message(self, name: str) -> str:
        return (
            f"unknown {self.kind} '{name}'{did_you_mean(name, self._items)}"
            f" (choose one of: {', '.join(sorted(self._items))})"
        )

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(self.unknown_message(name)) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self) -> list[str]:
        return sorted(self._items)
