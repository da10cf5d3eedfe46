"""A benchmark's curated results file: its title and reading around one section per command, each run of a command
replacing the table that command wrote before."""

from __future__ import annotations

from pathlib import Path

RUN_END = "<!-- end of run -->"


def write_run(output: Path, command: str, lines: list[str]) -> None:
    """Writes one run's section (``lines``: its header, command and table) into the results file ``output``. A new
    run replaces the old table: the section an earlier run of the same ``command`` wrote (between
    ``<!-- run: COMMAND -->`` and :data:`RUN_END`) is replaced, another command's section is appended. The text around
    the sections (the reading) is kept; revise it when the numbers change."""
    start = f"<!-- run: {command.strip()} -->"
    section = "\n".join([start, *lines, "", RUN_END])
    text = output.read_text() if output.is_file() else ""
    if start in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(RUN_END, 1)[1]
    else:
        text = f"{text.rstrip()}\n\n{section}\n" if text.strip() else f"{section}\n"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
