"""The README stays short, every local link in it and in docs/ leads somewhere, and every
output the docs show is what its command prints (docs/regenerate.py, `make docs`)."""

import argparse
import importlib.util
import re
import shlex
import sys

import pytest
from helpers import ROOT

LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def _pages():
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_readme_is_a_front_page_not_a_manual():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move detail into docs/"


def test_local_links_and_anchors_resolve():
    for page in _pages():
        for target, anchor in LINK.findall(page.read_text()):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path = (page.parent / target).resolve()
            assert path.exists(), f"{page.name}: link to missing {target}"
            if anchor and path.suffix == ".md":
                headings = [_anchor(h) for h in re.findall(r"^#+ (.+)$", path.read_text(), re.M)]
                assert anchor[1:] in headings, f"{page.name}: no heading {anchor} in {target}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


# -- outputs the docs show are what the commands print (docs/regenerate.py) ---------------
def _regenerate():
    """docs/regenerate.py as a module (it is a script beside the docs, not in the package)."""
    spec = importlib.util.spec_from_file_location("regenerate", ROOT / "docs" / "regenerate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["regenerate"] = module          # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


REGENERATE = _regenerate()
BLOCKS = REGENERATE.all_blocks()


def test_output_blocks_are_marked_and_cover_the_real_outputs():
    """Every block the prose calls real output, and every fenced block right after a
    ```bash block of commands (the shape of 'command, then what it printed'), names the
    command that printed it."""
    marked = {(b.page, b.first) for b in BLOCKS}
    assert len(BLOCKS) >= 20
    for page in _pages():
        lines = page.read_text().splitlines()
        fences = [k for k, line in enumerate(lines) if line.startswith("```")]
        opening = fences[0::2]
        for k in opening:
            previous = next((j for j in reversed(opening) if j < k), None)
            after_commands = (previous is not None and lines[previous] == "```bash"
                              and _fence_end(lines, previous) in (k - 1, k - 2)
                              and lines[k] == "```")
            real = any("real output" in lines[j].lower() for j in range(max(0, k - 12), k))
            if after_commands or (real and lines[k] == "```"):
                assert (page, k + 1) in marked, f"{page.name}:{k + 1}: output without a marker"


def _fence_end(lines, start):
    return next(k for k in range(start + 1, len(lines)) if lines[k].startswith("```"))


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.where())
def test_every_marked_command_exists_and_parses(block):
    for command in block.commands + block.options.get("setup", []):
        words = shlex.split(command.split("&&")[0].split(">")[0])
        while words and re.fullmatch(r"\w+=\S*", words[0]):          # VAR=value prefixes
            words.pop(0)
        if words[0].endswith("mpiexec"):
            words = words[3:]                                      # mpiexec -n N
        program = words[0].rsplit("/", 1)[-1]
        if program == "deq-petsc":
            _parses(words[1:])
        elif program == "python":
            assert (ROOT / words[1]).is_file(), f"{block.where()}: no script {words[1]}"
        else:
            assert program == "printf", f"{block.where()}: unexpected command {command}"


def _parses(argv):
    """The command line as deq-petsc reads it: our flags by argparse, the rest PETSc's."""
    from deq_petsc.cli.main import build_parser, split_petsc_args
    args, petsc = split_petsc_args(build_parser(), argv)
    assert args.command_name


QUICK = [b for b in BLOCKS if not b.slow]


def test_the_quick_blocks_take_the_suites_time_budget():
    """The suite reruns these; more than a handful would cost more than ~20 s."""
    assert 3 <= sum(len(b.commands) for b in QUICK) <= 6


@pytest.mark.parametrize("block", QUICK, ids=lambda b: b.where())
def test_quick_outputs_are_what_the_commands_print(block):
    problems = REGENERATE.check_block(block)
    assert not problems, (f"{block.where()}: the docs no longer show what "
                          f"`{block.command}` prints (make docs rewrites it):\n"
                          + "\n".join(problems))


@pytest.mark.parametrize("docs, printed, same", [
    ("took 0.0122 s (0.641 ms per f evaluation)", "took 1.5 s (30.2 ms per f evaluation)", True),
    ("after 18 its, 19 f evals", "after 18 its, 20 f evals", False),
    ("||F|| 8.059e+01 -> 4.705e-07", "||F||   8.059e+01 -> 4.7051e-07", True),
    ("||F|| 8.059e+01 -> 4.705e-07", "||F|| 8.059e+01 -> 5.2e-07", False),
    ("torch 2.13.0+cpu", "torch 2.14.0+cpu", False),
    ("deq-petsc: error: x", "deq-petsc solve: error: x", False),
    ("one line", "one line\nand another", False),
])
def test_the_comparison_masks_times_and_nothing_else(docs, printed, same):
    assert (REGENERATE.differences(docs, printed) == []) is same


def test_compare_help_lists_exactly_the_sets_compare_runs():
    from deq_petsc.cli.main import build_parser
    from deq_petsc.studies.compare import DEFAULT_SETS

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    text = " ".join(sub.choices["compare"].description.split())
    listed = re.search(r"default: ([^.]+)\.", text).group(1).split(", ")
    assert listed == list(DEFAULT_SETS)


def test_the_image_channels_the_docs_name_are_the_images():
    from deq_petsc.science.data.graph_image import MOLECULE_CHANNELS, PERIODIC_CHANNELS
    text = (ROOT / "docs" / "data.md").read_text()
    assert f"| {len(MOLECULE_CHANNELS)} x 32 x 32," in text
    assert f"| {len(PERIODIC_CHANNELS)} x 16 x 16," in text
    assert f"float32 [M, {len(MOLECULE_CHANNELS)}, 32, 32]" in text
