"""One registration mechanism for everything tvvar builds by name: decompositions of A_tj
(:data:`tvvar.core.DECOMPOSITIONS`), data sources (:data:`tvvar.sources.SOURCES`), training objectives
(:data:`tvvar.train.OBJECTIVES`), Ψ layers and norms (:data:`tvvar.model.PSI`, :data:`tvvar.model.NORMS`).

A registry lives in the lowest module that needs it and never imports its members. A member registers itself
where it is defined (``@DECOMPOSITIONS.register("attention")`` or the module's own decorator, such as
:func:`tvvar.core.register`), and the package ``tvvar/__init__.py`` — the only module above everything — imports
the modules that define the built-in members, so ``import tvvar`` (which any ``import tvvar.<anything>`` runs
first) registers all of them. No module names a higher one, so the import graph has no cycle
(``tests/test_repository.py`` walks it).

A user's own member needs one line: the decorator, in a module the user imports. An installed package can also
declare members as entry points in the group ``tvvar-<registry>`` (``tvvar-decompositions``, ``tvvar-sources``,
``tvvar-objectives``, ``tvvar-psi``, ``tvvar-norms``), for example in its pyproject.toml::

    [project.entry-points."tvvar-decompositions"]
    my_mixer = "my_package.mixers"

On the first lookup of a name it does not hold, a registry imports the modules its group declares (each
registers its members with the decorator on import), then looks again.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

__all__ = ["Registry"]

T = TypeVar("T")


def _same_definition(a: Any, b: Any) -> bool:
    key = lambda x: (getattr(x, "__module__", None), getattr(x, "__qualname__", None))  # noqa: E731
    return key(a)[1] is not None and key(a) == key(b)


class Registry(Generic[T]):
    """Members of one kind by name.

    ``what``: how errors name the kind ("decomposition", "objective", …); ``group``: the entry-point group a
    package may declare members in; ``validate(name, member)``: raises on a member that cannot serve (called
    before it is stored); ``reserved``: names no member may take.
    """

    def __init__(self, what: str, group: str, *, validate: Callable[[str, T], None] | None = None,
                 reserved: tuple[str, ...] = ()):
        self.what, self.group = what, group
        self._validate, self._reserved = validate, frozenset(reserved)
        self._members: dict[str, T] = {}
        self._entry_points_loaded = False

    # -- registration ---------------------------------------------------------------------------------
    def register(self, name: str, member: T | None = None) -> Any:
        """``register(name)(member)`` (a decorator) or ``register(name, member)``; returns the member.
        A name already held by another member is refused (register it under a new name), unless the new member
        is the same definition run again (same module and qualified name: a reloaded module, a notebook cell
        run twice), which replaces it."""
        if not (isinstance(name, str) and name):
            raise ValueError(f"a {self.what} name must be a non-empty string, got {name!r}")

        def deco(m: T) -> T:
            if name in self._reserved:
                raise ValueError(f"{self.what} name {name!r} is reserved")
            if self._validate is not None:
                self._validate(name, m)
            held = self._members.get(name)
            if held is not None and held is not m and not _same_definition(held, m):
                raise ValueError(f"{self.what} name {name!r} is already registered to "
                                 f"{getattr(held, '__qualname__', held)!r}")
            self._members[name] = m
            return m

        return deco if member is None else deco(member)

    def unregister(self, name: str) -> T:
        """Remove and return a member (for tests and for replacing a member deliberately)."""
        if name not in self._members:
            raise KeyError(f"no {self.what} named {name!r} is registered")
        return self._members.pop(name)

    @contextlib.contextmanager
    def temporarily(self, name: str, member: T) -> Iterator[T]:
        """Register ``member`` under ``name`` for the duration of a ``with`` block (tests, experiments)."""
        saved = self._members.pop(name, None)
        try:
            yield self.register(name, member)
        finally:
            self._members.pop(name, None)
            if saved is not None:
                self._members[name] = saved

    # -- lookup -----------------------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=self.group):
            importlib.import_module(ep.value.split(":")[0])

    def get(self, name: str) -> T:
        """The member called ``name``; an unknown name is a ValueError that lists the known ones."""
        if name not in self._members:
            self._load_entry_points()
        if name not in self._members:
            raise ValueError(f"unknown {self.what} {name!r}; available: {', '.join(self.names()) or '(none)'}")
        return self._members[name]

    __getitem__ = get

    def __contains__(self, name: object) -> bool:
        if name not in self._members:
            self._load_entry_points()
        return name in self._members

    def names(self) -> tuple[str, ...]:
        """Every registered name, sorted."""
        self._load_entry_points()
        return tuple(sorted(self._members))

    def items(self) -> list[tuple[str, T]]:
        return [(n, self._members[n]) for n in self.names()]

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(sorted(self._members))})"
