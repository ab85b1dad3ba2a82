"""Content-addressed on-disk cache of built datasets, verified on every load.

An entry's name is a hash of everything that determines its contents (task,
representation version, parameters, the source files' names and content
digests, subset size, seed), so a changed parameter or source is a different
entry and a stale one is never picked up, while a copy of the same sources
elsewhere, or touched, finds the entry it built. Each array is stored with its
BLAKE2 digest; a truncated or altered file fails verification and the entry is
rebuilt. Entries are written into a temporary folder and renamed into place,
so a killed build leaves no half-written entry.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from deq_petsc.core.errors import DEQCacheError

FORMAT_VERSION = 1


def default_cache_dir() -> Path:
    root = os.environ.get("DEQ_PETSC_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "deq_petsc")
    return Path(root)


def file_stamp(path) -> tuple:
    """``(resolved path, size, mtime_ns)``: a cheap key that changes when the file does,
    for caches within one process."""
    st = os.stat(path)
    return str(Path(path).resolve()), st.st_size, st.st_mtime_ns


def fingerprint(path) -> dict:
    """Identity of a source file by content: its name, size and BLAKE2 digest (a copied
    or touched file keeps it). Hashed once per process and version of the file."""
    return _content_fingerprint(file_stamp(path))


@functools.lru_cache(maxsize=64)
def _content_fingerprint(stamp: tuple) -> dict:
    path, size, _ = stamp
    return {"name": Path(path).name, "size": size, "blake2b": _digest(Path(path))}


def cache_key(params: dict) -> str:
    blob = json.dumps({"format": FORMAT_VERSION, **params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 23), b""):
            h.update(chunk)
    return h.hexdigest()


class DatasetCache:
    """Arrays plus JSON metadata under ``root/<name>/<key>/``."""

    def __init__(self, root=None, required=(), arrays=()):
        self.root = Path(root) if root is not None else default_cache_dir()
        self.required = tuple(required)        # metadata keys an entry must have
        self.arrays = tuple(arrays)            # and the arrays it must hold

    def path(self, name: str, key: str) -> Path:
        return self.root / name / key

    def load(self, name: str, key: str):
        """``(arrays, meta)`` of a verified entry; ``None`` if absent.

        Raises :class:`DEQCacheError` if the entry exists but is corrupt.
        """
        entry = self.path(name, key)
        meta_file = entry / "meta.json"
        if not entry.exists():
            return None
        try:
            meta = json.loads(meta_file.read_text())
            if not isinstance(meta, dict) or not isinstance(meta.get("digests"), dict) or \
                    any(k not in meta for k in self.required):
                raise DEQCacheError(f"{meta_file} is not a cache record (a "
                                    f"{type(meta).__name__} without the expected fields)")
            # an entry without one of its arrays is as stale as one with a damaged array
            missing = [a for a in self.arrays if a not in meta["digests"]]
            if missing:
                raise DEQCacheError(f"{meta_file} records no {missing[0]!r} array")
            arrays = {}
            for array_name, digest in meta["digests"].items():
                file = entry / f"{array_name}.npy"
                if _digest(file) != digest:
                    raise DEQCacheError(f"{file} does not match its recorded digest")
                arrays[array_name] = np.load(file, allow_pickle=False)
        except DEQCacheError:
            raise
        except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as err:
            raise DEQCacheError(f"cache entry {entry} is unreadable: {err}") from None
        return arrays, meta

    def store(self, name: str, key: str, arrays: dict, meta: dict) -> Path:
        entry = self.path(name, key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=entry.parent))
        try:
            digests = {}
            for array_name, array in arrays.items():
                file = tmp / f"{array_name}.npy"
                np.save(file, np.ascontiguousarray(array), allow_pickle=False)
                digests[array_name] = _digest(file)
            (tmp / "meta.json").write_text(json.dumps({**meta, "digests": digests}, indent=1,
                                                      default=str))
            self.discard(name, key)
            os.replace(tmp, entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return entry

    def store_or_warn(self, name: str, key: str, arrays: dict, meta: dict) -> str:
        """:meth:`store`, but a cache folder that cannot be written (read-only, full) costs
        only the caching: one warning, and the build is used as it is."""
        try:
            return str(self.store(name, key, arrays, meta))
        except OSError as err:
            import sys
            print(f"deq_petsc.science.data: WARNING: could not write the cache entry under {self.root} "
                  f"({err.strerror or err}); using this build without caching it (set "
                  f"DEQ_PETSC_CACHE or --cache-dir to a writable folder)", file=sys.stderr)
            return "not cached"

    def discard(self, name: str, key: str) -> None:
        shutil.rmtree(self.path(name, key), ignore_errors=True)
