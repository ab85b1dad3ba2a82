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
import re
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
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError) and err.filename in (None, tmp):   # a full disk, say:
            err.filename = str(path)          # name the file meant, and what is kept
            err.add_note(f"the previous {path.name} is intact (replaced only when the new one "
                         f"is written whole)" if path.exists() else
                         f"no partial {path.name} was left")
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
    """One row per dict; the columns are every key, in order of first appearance. Text
    cells are written :func:`spreadsheet_safe`: the names and inputs in them come from
    users' files and flags."""
    buf = io.StringIO()
    columns = list(dict.fromkeys(k for r in rows for k in r))
    writer = csv.DictWriter(buf, fieldnames=[spreadsheet_safe(c) for c in columns])
    writer.writeheader()
    writer.writerows({spreadsheet_safe(k): spreadsheet_safe(v) for k, v in r.items()}
                     for r in rows)
    with atomic_write(path) as fh:
        fh.write(buf.getvalue())
    return str(path)


#: what starts a formula in a spreadsheet (OWASP's list for CSV injection)
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def spreadsheet_safe(value):
    """``value``, or for text a spreadsheet would run as a formula (``=HYPERLINK(...)``,
    ``+SUM(...)``, ``-2+cmd|...``, ``@SUM``) the same text after a ``'``, which makes it
    text again when opened (OWASP's rule). Numbers, and text that is a number (``-0.5``),
    stay as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and \
            not _NUMBER.fullmatch(value):
        return "'" + value
    return value
