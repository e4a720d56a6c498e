"""Every command a message or docstring tells the user to run exists, with the flags it names."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from featdistill.cli import build_parser

SRC = Path(__file__).resolve().parents[1] / "src" / "featdistill"
DOCS = Path(__file__).resolve().parents[1] / "docs"
COMMAND = re.compile(r"`featdistill ([a-z][a-z-]*)([^`]*)`")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z-]*)")


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _suggestions() -> list[tuple[str, str, str]]:
    found = []
    for path in [*SRC.rglob("*.py"), *DOCS.rglob("*.md"), SRC.parents[1] / "README.md"]:
        for m in COMMAND.finditer(path.read_text(encoding="utf-8")):
            found.append((str(path.relative_to(SRC.parents[1])), m.group(1), m.group(2)))
    return found


def test_every_suggested_command_and_flag_exists():
    subs = _subparsers()
    suggestions = _suggestions()
    assert len(suggestions) > 20  # the scan really reads the messages and docs
    bad = []
    for where, cmd, rest in suggestions:
        if cmd not in subs:
            bad.append(f"{where}: `featdistill {cmd}` (no such command)")
            continue
        sub = subs[cmd]
        nested = next((a for a in sub._actions if isinstance(a, argparse._SubParsersAction)), None)
        options = {o for a in sub._actions for o in a.option_strings}
        if nested is not None:  # e.g. `featdistill cache verify`, `featdistill condense eval`
            for sub2 in nested.choices.values():
                options |= {o for a in sub2._actions for o in a.option_strings}
        options |= {"--debug"}  # accepted anywhere on the line
        for flag in FLAG.findall(rest):
            if flag not in options:
                bad.append(f"{where}: `featdistill {cmd}{rest}` ({flag} is not an option of {cmd})")
    assert not bad, "\n".join(bad)
