"""Silencing what C libraries write straight to a file descriptor.

PETSc's TAO monitors (on ranks other than 0) and RDKit's extended-Hueckel code
(YAeHMOP's "Distance between atoms ... is suspicious", once per O-H or N-H bond
of a molecule whose bonds it perceives) write with C's ``printf``, below
Python's ``sys.stdout``: only redirecting the descriptor itself quiets them.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager


@contextmanager
def silenced(fd: int):
    """Send the process's file descriptor ``fd`` (1 or 2) to /dev/null for the block."""
    stream = sys.stdout if fd == 1 else sys.stderr
    stream.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        stream.flush()
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)
