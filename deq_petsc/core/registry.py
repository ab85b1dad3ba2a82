"""One registry idiom: a name -> entry table that plug-ins add to with a decorator.

Tasks, field tasks and solver sets are registered this way, so that the command line's
choices, help texts and docs read the names from the one table that the code looks
entries up in (a hand-copied list of names drifts: ``compare --help`` once omitted a set
that compare ran by default). An unknown name is a :class:`UnknownName` (a
``DEQInputError``, ``KeyError`` and ``ValueError`` at once) whose message lists what is
known.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from .errors import DEQInputError

T = TypeVar("T")


class UnknownName(DEQInputError, KeyError):
    """A name no entry of the registry has, or a plug-in's that cannot be loaded: input the
    command cannot use (one line, exit status 2), and a KeyError and ValueError as well."""

    def __str__(self) -> str:          # KeyError would quote the whole message
        return str(self.args[0])


class Registry(Generic[T]):
    """``what`` (``"task"``) by name, in registration order.

    ``@TASKS.register`` adds a class under its ``name`` attribute, ``TASKS.register(x,
    name="bratu")`` anything under the name given; ``check`` (if given) is called on
    every entry first and raises for one that does not keep the protocol. Installed
    packages add entries through the entry-point ``group``: their names are listed from
    the packages' metadata, and an entry is imported only when it is looked up (listing the
    choices of the command line imports nothing, so no plug-in can initialise PETSc or
    torch before the command line has set them up).
    """

    def __init__(self, what: str, check: Callable[[str, T], None] | None = None,
                 group: str | None = None):
        self.what = what
        self._check = check
        self._entries: dict[str, T] = {}
        #: the entry-point group that installed packages add entries through
        #: (``[project.entry-points."deq_petsc.tasks"] rings = "mypkg.rings:RingTask"``)
        self.group = group
        self._declared = None

    def _plugins(self) -> dict:
        """name -> entry point of the installed packages' entries not registered yet,
        read from their metadata (nothing imported)."""
        if self._declared is None:
            from importlib.metadata import entry_points
            self._declared = ({} if self.group is None else
                              {p.name: p for p in entry_points(group=self.group)})
        return {n: p for n, p in self._declared.items() if n not in self._entries}

    def _load(self, name: str) -> None:
        """Import and register the installed entry ``name``; one that cannot be loaded or
        breaks the protocol is an :class:`UnknownName` that says why."""
        point = self._plugins().get(name)
        if point is None:
            return
        try:
            self.register(point.load(), name=name)
        except Exception as err:              # noqa: BLE001 -- any failure of foreign code
            self._declared.pop(name, None)
            raise UnknownName(f"the {self.what} {name!r} of {point.value} could not be "
                              f"loaded: {type(err).__name__}: {err}") from None

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
        if name not in self._entries:
            self._load(name)
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(f"unknown {self.what} {name!r}; known: "
                              f"{', '.join(self.names())}") from None

    def get(self, name: str, default=None):
        try:
            return self[name]
        except UnknownName:
            return default

    def registered(self) -> dict[str, T]:
        """The entries registered so far, the installed packages' not imported."""
        return dict(self._entries)

    def names(self) -> list[str]:
        """Every name: the registered ones, then the installed packages' (not imported)."""
        return list(self._entries) + list(self._plugins())

    def __contains__(self, name) -> bool:
        return name in self._entries or name in self._plugins()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def items(self) -> list[tuple[str, T]]:
        """Every entry, the installed packages' imported (one that cannot be is left out,
        named on stderr: a listing of all must not fail for one plug-in)."""
        import sys
        for name in list(self._plugins()):
            try:
                self._load(name)
            except UnknownName as err:
                print(f"deq_petsc: {err}; left out", file=sys.stderr)
        return list(self._entries.items())

    def values(self) -> list[T]:
        return [entry for _, entry in self.items()]

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._entries)})"
