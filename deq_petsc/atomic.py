"""Files replaced atomically: a reader (or a resumed run) sees the old file or the new one, never half.

The new content goes to a temporary file in the same folder, is flushed and
fsync'd, then renamed over the old name; on any error the temporary file goes.
The file gets the permissions any new file of the user's gets (``0666`` less the
umask), not the ``0600`` of a temporary file.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_write(path, mode: str = "w"):
    """``open(path, mode)`` whose content replaces ``path`` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as fh:
            yield fh
            fh.flush()
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _umask() -> int:
    mask = os.umask(0)          # the only way to read it is to set it
    os.umask(mask)
    return mask


def write_json(path, obj) -> str:
    with atomic_write(path) as fh:
        fh.write(json.dumps(obj, indent=1, default=float))
    return str(path)


def write_csv(path, rows: list[dict]) -> str:
    """One row per dict; the columns are every key, in order of first appearance."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    with atomic_write(path) as fh:
        fh.write(buf.getvalue())
    return str(path)
