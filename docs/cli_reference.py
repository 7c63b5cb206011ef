"""The README's command-line reference, generated from the parser itself.

``python docs/cli_reference.py`` rewrites the block between the README's
``cli-reference`` markers; ``tests/test_cli.py`` checks that it is up to date.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
START, END = "<!-- cli-reference start -->", "<!-- cli-reference end -->"


def command_help(name: str, text: str) -> str:
    """``--help`` of one command as the README shows it: usage and options, without
    the description, the section headings and ``--help`` itself."""
    usage, _, rest = text.partition("\n\n")
    kept = [line for line in rest.splitlines() if line.startswith("  ") and "--help" not in line]
    body = "\n".join([usage, "", *kept])
    return f"`prunelab {name} --help`:\n\n```\n{body}\n```\n"


def reference() -> str:
    from prunelab.cli import subcommands

    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal's width
    try:
        helps = [command_help(name, sub.format_help()) for name, sub in subcommands().items()]
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before
    return "\n".join(helps)


def updated(readme: str) -> str:
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    return pattern.sub(lambda _: f"{START}\n{reference()}{END}", readme)


if __name__ == "__main__":
    README.write_text(updated(README.read_text()))
