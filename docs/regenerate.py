"""Rerun the commands whose output README.md and docs/*.md show, and rewrite those blocks.

    .venv/bin/python docs/regenerate.py            # every block (`make docs`; the demo: 7 min)
    .venv/bin/python docs/regenerate.py --quick    # the blocks the test suite reruns
    .venv/bin/python docs/regenerate.py --check    # compare instead of rewriting; exit 1 if stale
    .venv/bin/python docs/regenerate.py --only "deq-petsc solve"   # blocks whose command has this

A fenced block the docs present as real output follows a marker naming what printed it:

    <!-- output: deq-petsc solve -snes_monitor_cancel -->
    ```
    ...
    ```

The marker may go on over further lines, one ``key: value`` each:

    keep: REGEX     show only the lines that match (an excerpt)
    drop: REGEX     leave out the lines that match (progress lines, a long middle)
    setup: COMMAND  run first in the same scratch folder (repeatable; e.g. a checkpoint)
    slow: WHY       too slow for the test suite: regenerated here only, the test checks
                    that its command parses
    rtol: X         relative tolerance of numbers with a fraction (default 0.01)
    numbers: any    compare only the words: every number varies by machine (-log_view)

The command ``$`` takes the commands from the block itself (its ``$ ...`` lines, each
followed by its output). Commands run under bash in a scratch folder that links the
repository's ``examples``, ``benchmarks`` and ``.venv``, with ``.venv/bin`` first on PATH,
so what they write (``runs/``, ``pngs/``) stays out of the checkout. Before comparing,
times (``0.0122 s``, ``0.641 ms``) are masked, the home folder reads ``~`` and cache
digests ``...``; words must match exactly (runs of spaces count as one), integers exactly,
other numbers to ``rtol``. The test suite (tests/test_docs.py) reruns every block that is
not ``slow``.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- output: (.*?)(?: -->)?$")
KEYS = ("keep", "drop", "setup", "slow", "rtol", "numbers")
#: what a scratch folder links from the checkout, so the docs' relative paths work there
LINKED = ("examples", "benchmarks", ".venv")
#: a duration: the number before s / ms / min (or h) is the machine's, not the method's
TIME = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:e[-+]?\d+)?( ?)(ms|s|min|h)\b")
#: a version (3.26.1, 2.13.0+cpu) is one word, not three numbers
VERSION = r"\d+(?:\.\d+){2,}[+\w.]*"
NUMBER = r"[-+]?(?:\d[\d,]*\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
TOKEN = re.compile(rf"({VERSION})|({NUMBER})")


@dataclass
class Block:
    """One marked output block of one page: its command, settings and current text."""

    page: Path
    command: str
    options: dict = field(default_factory=dict)
    first: int = 0            # index of the block's first line of output
    last: int = 0             # index of the line after its last
    text: str = ""

    @property
    def slow(self) -> bool:
        return "slow" in self.options

    @property
    def commands(self) -> list[str]:
        """The commands to run: the marker's, or the block's own ``$`` lines."""
        if self.command != "$":
            return [self.command]
        return [line[2:] for line in self.text.splitlines() if line.startswith("$ ")]

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.first + 1}"


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def find_blocks(page: Path) -> list[Block]:
    """Every marked block of a page. A marker not followed by a fenced block is an error:
    the docs would claim an output they do not show."""
    lines = page.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        match = MARKER.match(lines[i])
        if not match:
            i += 1
            continue
        block = Block(page, match.group(1).strip())
        closed = lines[i].rstrip().endswith("-->")
        while not closed:
            i += 1
            closed = lines[i].rstrip().endswith("-->")
            key, _, value = lines[i].removesuffix("-->").strip().partition(":")
            if key:
                if key not in KEYS:
                    raise ValueError(f"{page.name}:{i + 1}: unknown marker key {key!r}")
                block.options.setdefault(key, []).append(value.strip())
        i += 1
        block.first, block.last = _extent(lines, i, page)
        block.text = "\n".join(lines[block.first:block.last])
        blocks.append(block)
        i = block.last
    return blocks


def _extent(lines: list[str], i: int, page: Path) -> tuple[int, int]:
    """The output's lines after a marker at line ``i``: a fenced block's inside, or a
    Markdown table (a command that prints one, such as ``compare``)."""
    if i < len(lines) and lines[i].startswith("```"):
        end = next(k for k in range(i + 1, len(lines)) if lines[k].startswith("```"))
        return i + 1, end
    if i < len(lines) and lines[i].startswith("|"):
        end = next((k for k in range(i, len(lines)) if not lines[k].startswith("|")), len(lines))
        return i, end
    raise ValueError(f"{page.name}:{i + 1}: an output marker must be followed by a fenced "
                     f"block or a table")


def all_blocks() -> list[Block]:
    return [b for page in pages() for b in find_blocks(page)]


# -- running ------------------------------------------------------------------------------
def scratch_folder() -> Path:
    """A folder where the docs' relative paths (examples/, .venv/bin/...) work and whatever
    the commands write is thrown away."""
    folder = Path(tempfile.mkdtemp(prefix="deq-petsc-docs."))
    for name in LINKED:
        if (ROOT / name).exists():
            (folder / name).symlink_to(ROOT / name)
    return folder


def environment() -> dict:
    venv = Path(sys.executable).parent
    return {**os.environ, "PATH": f"{venv}{os.pathsep}{os.environ.get('PATH', '')}",
            "COLUMNS": "80"}


def run_block(block: Block, timeout: float = 3600) -> str:
    """The block's text as its commands print it now (setup first; stdout and stderr
    interleaved as a terminal shows them), filtered and sanitised."""
    folder = scratch_folder()
    try:
        env = environment()
        for command in block.options.get("setup", []):
            _shell(command, folder, env, timeout)
        parts = []
        for command in block.commands:
            out = _filtered(sanitise(_shell(command, folder, env, timeout), folder), block)
            parts.append(f"$ {command}\n{out}" if block.command == "$" else out)
        return "\n".join(parts)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _shell(command: str, folder: Path, env: dict, timeout: float) -> str:
    result = subprocess.run(["bash", "-c", command], cwd=folder, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    return result.stdout


def sanitise(text: str, folder: Path) -> str:
    """What does not belong in docs: the scratch folder, the home folder, cache digests,
    trailing spaces and blank lines."""
    text = text.replace(str(folder.resolve()) + "/", "").replace(str(folder) + "/", "")
    text = text.replace(str(Path.home()), "~")
    text = re.sub(r"(~/\.cache/deq_petsc/[\w-]+/)[0-9a-f]{16,}", r"\1...", text)
    return "\n".join(line.rstrip() for line in text.splitlines()).strip("\n")


def _filtered(text: str, block: Block) -> str:
    lines = text.splitlines()
    for pattern in block.options.get("keep", []):
        lines = [line for line in lines if re.search(pattern, line)]
    for pattern in block.options.get("drop", []):
        lines = [line for line in lines if not re.search(pattern, line)]
    return "\n".join(lines)


# -- comparing ----------------------------------------------------------------------------
def tokens(text: str) -> list[tuple[str, str]]:
    """``(kind, value)``: ``word`` for text between numbers (spaces collapsed), ``int``,
    ``float``; times are masked first, versions are words."""
    text = TIME.sub(r"<time>\1\2", text)
    out, pos = [], 0
    for match in TOKEN.finditer(text):
        out.append(("word", text[pos:match.start()]))
        if match.group(1):
            out.append(("word", match.group(1)))
        else:
            number = match.group(2).replace(",", "")
            is_int = re.fullmatch(r"[-+]?\d+", number) is not None
            out.append(("int" if is_int else "float", number))
        pos = match.end()
    out.append(("word", text[pos:]))
    merged = []
    for kind, value in out:                     # adjacent words as one, spaces collapsed
        if kind == "word":
            value = re.sub(r"\s+", " ", value)
            if merged and merged[-1][0] == "word":
                merged[-1] = ("word", merged[-1][1] + value)
                continue
            if not value:
                continue
        merged.append((kind, value))
    return [(k, v.strip() if k == "word" else v) for k, v in merged]


def differences(expected: str, actual: str, rtol: float = 0.01,
                words_only: bool = False) -> list[str]:
    """Where ``actual`` departs from ``expected`` line by line, beyond the tolerances; an
    empty list when the docs still say what the command prints."""
    want, got = expected.splitlines(), actual.splitlines()
    if len(want) != len(got):
        diff = difflib.unified_diff(want, got, "docs", "printed", lineterm="", n=1)
        return [f"{len(want)} lines in the docs, {len(got)} printed:", *list(diff)[:30]]
    problems = []
    for k, (w, g) in enumerate(zip(want, got)):
        if why := _line_difference(w, g, rtol, words_only):
            problems.append(f"line {k + 1}: {why}\n  docs:    {w}\n  printed: {g}")
    return problems


def _line_difference(want: str, got: str, rtol: float, words_only: bool) -> str | None:
    a, b = tokens(want), tokens(got)
    if words_only:
        a, b = [t for t in a if t[0] == "word"], [t for t in b if t[0] == "word"]
    if [k for k, _ in a] != [k for k, _ in b]:
        return "different text"
    for (kind, x), (_, y) in zip(a, b):
        if kind == "word" and x != y:
            return f"{x!r} against {y!r}"
        if kind == "int" and int(x) != int(y):
            return f"{x} against {y}"
        if kind == "float" and abs(float(x) - float(y)) > rtol * max(abs(float(x)), abs(float(y))):
            return f"{x} against {y} (beyond rtol {rtol})"
    return None


def check_block(block: Block) -> list[str]:
    rtol = float(block.options.get("rtol", ["0.01"])[-1])
    words_only = block.options.get("numbers", [""])[-1] == "any"
    return differences(block.text, run_block(block, timeout=600), rtol, words_only)


# -- rewriting ----------------------------------------------------------------------------
def rewrite(page: Path, outputs: dict[int, str]) -> None:
    """Replace the blocks whose output starts at the given lines by their new text."""
    lines = page.read_text().splitlines()
    for block in sorted(find_blocks(page), key=lambda b: -b.first):
        if block.first in outputs:
            lines[block.first:block.last] = outputs[block.first].splitlines()
    page.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the blocks not marked slow")
    parser.add_argument("--check", action="store_true", help="compare, do not rewrite")
    parser.add_argument("--only", help="only blocks whose command contains this text")
    args = parser.parse_args(argv)
    stale = 0
    for page in pages():
        chosen = [b for b in find_blocks(page) if not (args.quick and b.slow)
                  and (not args.only or any(args.only in c for c in b.commands))]
        outputs = {}
        for block in chosen:
            print(f"{block.where()}: {block.command}", flush=True)
            if args.check:
                problems = check_block(block)
                stale += bool(problems)
                print("\n".join(problems) or "  as documented")
            else:
                outputs[block.first] = run_block(block)
        if outputs:
            rewrite(page, outputs)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
