"""One name -> entry table per extension point (factorization kinds, latent gates, optimizers, metrics).

An entry registers itself where it is defined, so adding one is one module; a module outside the package
registers the same way once it is imported (`--import=MODULE`, see `lax_pretrain.extensions`). Every list of
choices the code, the error messages and the docs show is read from here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> entries of one kind of extension, in registration order (built-ins first)."""

    def __init__(self, what: str, error: type[Exception] = ValueError):
        self.what, self.error = what, error  # error: what an unknown name raises (a ValueError subclass)
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Adds `entry` under `name`; a second, different entry under a taken name is refused (two modules
        claiming one name would make a config mean different things depending on import order)."""
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"a {self.what} name must be letters, digits, '_' or '-', got {name!r}")
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.what} {name!r} is already registered ({self._entries[name]!r})")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str) -> Callable[[T], T]:
        """`@REGISTRY.decorator('name')` over a class or function registers it as the entry."""
        return lambda entry: self.register(name, entry)

    def get(self, name: str, *, key: str) -> T:
        """The entry, or a one-line error naming the config key, the choices and how extensions come in."""
        if name not in self._entries:
            raise self.error(
                f"{key}={name!r} is not a registered {self.what}; choose one of {', '.join(self._entries)} "
                "(or name the module that registers it with --import=MODULE)"
            )
        return self._entries[name]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def items(self) -> Iterator[tuple[str, T]]:
        return iter(tuple(self._entries.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._entries
