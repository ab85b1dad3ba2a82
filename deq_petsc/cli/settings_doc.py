"""``python -m deq_petsc.cli.settings_doc > docs/settings.md``: the run settings' reference,
generated from their declarations (:mod:`deq_petsc.science.config`, the demo's
:class:`~deq_petsc.studies.demo.DemoConfig`) and the defaults the commands give them
(their parsers, built from the same declarations); here, above both, so that it may read
both."""

import argparse
import re

from deq_petsc.science.config import TrainConfig, markdown
from deq_petsc.studies.demo import DemoConfig

from .main import build_parser


def command_defaults(command: str) -> dict[str, str]:
    """``deq-petsc COMMAND``'s default of each of its settings, as its help says it."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    p = sub.choices[command]
    out = {}
    for action in p._actions:
        if action.dest not in (p.get_default("settings") or ()):
            continue
        if isinstance(action, argparse._StoreFalseAction):
            out[action.dest] = f"`{action.default!r}`"
            continue
        said = re.search(r"\(default: (.*)\)$", action.help or "")
        text = said.group(1) if said else ("(required)" if action.required else "`None`")
        out[action.dest] = text.replace("%(default)s", f"`{action.default}`")
    return out


def settings_markdown() -> str:
    return markdown([(TrainConfig, "train", command_defaults("train"), True),
                     (DemoConfig, "demo", command_defaults("demo"), False)])


if __name__ == "__main__":
    print(settings_markdown(), end="")
