"""One registry idiom: a name -> entry table that plug-ins add to with a decorator.

Tasks, field tasks and solver sets are registered this way, so that the command line's
choices, help texts and docs read the names from the one table that the code looks
entries up in (a hand-copied list of names drifts: ``compare --help`` once omitted a set
that compare ran by default). An unknown name is a :class:`UnknownName`, a ``KeyError``
and a ``ValueError`` at once, whose message lists what is known.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownName(KeyError, ValueError):
    """A name no entry of the registry has."""

    def __str__(self) -> str:          # KeyError would quote the whole message
        return str(self.args[0])


class Registry(Generic[T]):
    """``what`` (``"task"``) by name, in registration order.

    ``@TASKS.register`` adds a class under its ``name`` attribute, ``TASKS.register(x,
    name="bratu")`` anything under the name given; ``check`` (if given) is called on
    every entry first and raises for one that does not keep the protocol.
    """

    def __init__(self, what: str, check: Callable[[str, T], None] | None = None,
                 group: str | None = None):
        self.what = what
        self._check = check
        self._entries: dict[str, T] = {}
        #: the entry-point group that installed packages add entries through
        #: (``[project.entry-points."deq_petsc.tasks"] rings = "mypkg.rings:RingTask"``),
        #: loaded on the first look-up
        self.group = group
        self._plugins_loaded = group is None

    def _load_plugins(self) -> None:
        """Register the entries installed packages declare under :attr:`group`, once; one
        that cannot be loaded or breaks the protocol is named on stderr and left out (a
        broken plug-in must not stop every command)."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        import sys
        from importlib.metadata import entry_points

        for point in entry_points(group=self.group):
            try:
                self.register(point.load(), name=point.name)
            except Exception as err:          # noqa: BLE001 -- any failure of foreign code
                print(f"deq_petsc: the {self.what} {point.name!r} of {point.value} is left "
                      f"out: {type(err).__name__}: {err}", file=sys.stderr)

    def register(self, entry: T = None, *, name: str | None = None, replace: bool = False):
        """Add ``entry`` (usable as a decorator, bare or with ``name=``); a name taken
        by another entry is refused unless ``replace``."""
        if entry is None:
            return lambda e: self.register(e, name=name, replace=replace)
        own = getattr(entry, "name", None)
        key = name or own
        if not isinstance(key, str) or not key:
            raise ValueError(f"a {self.what} needs a name")
        if isinstance(own, str) and own != key:
            raise ValueError(f"the {self.what} {own!r} registered as {key!r}: one name")
        if self._check is not None:
            self._check(key, entry)
        if key in self._entries and self._entries[key] is not entry and not replace:
            raise ValueError(f"a {self.what} named {key!r} is already registered")
        self._entries[key] = entry
        return entry

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)

    def __getitem__(self, name: str) -> T:
        self._load_plugins()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(f"unknown {self.what} {name!r}; known: "
                              f"{', '.join(self._entries)}") from None

    def get(self, name: str, default=None):
        self._load_plugins()
        return self._entries.get(name, default)

    def __contains__(self, name) -> bool:
        self._load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._load_plugins()
        return iter(list(self._entries))

    def __len__(self) -> int:
        self._load_plugins()
        return len(self._entries)

    def names(self) -> list[str]:
        self._load_plugins()
        return list(self._entries)

    def items(self):
        self._load_plugins()
        return list(self._entries.items())

    def values(self):
        self._load_plugins()
        return list(self._entries.values())

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._entries)})"
