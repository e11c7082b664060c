"""What an object opened for each IP family, or why it could not."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from ..errors import FamilyUnavailableError

__all__ = ["PerFamily"]

T = TypeVar("T")


class PerFamily(Generic[T]):
    """What an object opened for each IP family, or why it could not.

    Every diagnostic opens its sockets per family the same way: a family the host lacks is
    remembered and reported when a probe needs it (:class:`FamilyUnavailableError`), so a host
    without IPv6 still pings over IPv4; any other failure (no privilege, a bad :class:`Bind`)
    is the caller's error at once, after closing whatever was already opened.
    """

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self._items: dict[bool, T | FamilyUnavailableError] = {}

    def open(self, opener: Callable[[bool], T], close: Callable[[T], None]) -> None:
        items: dict[bool, T | FamilyUnavailableError] = {}
        try:
            for v6 in (False, True):
                try:
                    items[v6] = opener(v6)
                except FamilyUnavailableError as e:
                    items[v6] = e
        except BaseException:
            for item in items.values():
                if not isinstance(item, FamilyUnavailableError):
                    close(item)
            raise
        if all(isinstance(i, FamilyUnavailableError) for i in items.values()):
            raise items[False]  # type: ignore[misc]
        self._items = items

    def get(self, v6: bool) -> T:
        item = self._items.get(v6)
        if item is None:
            raise RuntimeError(f"use the {self.owner} inside `async with {self.owner}() as ...:`")
        if isinstance(item, FamilyUnavailableError):
            raise FamilyUnavailableError(item.errno, f"IPv{6 if v6 else 4} unavailable: {item}")
        return item

    def items(self) -> list[tuple[bool, T]]:
        """``(v6, opened)`` for each family that opened."""
        missing = FamilyUnavailableError
        return [(v6, i) for v6, i in self._items.items() if not isinstance(i, missing)]

    def clear(self) -> None:
        self._items = {}
