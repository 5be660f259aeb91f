"""benchmarks/RESULTS.md holds the current result of each benchmark only (earlier runs live in git): every script
that writes into it replaces its own block between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->``."""
from __future__ import annotations

import datetime
import os
from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:begin -->", f"<!-- {name}:end -->"


def replace_block(path, name: str, body: str) -> None:
    """Put ``body`` between NAME's markers in ``path``, replacing what was there (the rest of the file is kept);
    a file without that block gets it appended, a missing file is created."""
    path = Path(path)
    begin, end = markers(name)
    block = f"{begin}\n{body.strip(chr(10))}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if begin in text and end in text[text.index(begin):]:
        i = text.index(begin)
        text = text[:i] + block + text[text.index(end, i) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_header(command: str, gpu: str, torch_version: str, triton_version: str, when: str | None = None) -> str:
    """The line every block starts with: date, GPU, stack and the command that produced the numbers."""
    when = when or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"{when} · {gpu} · torch {torch_version} · triton {triton_version} · `{command}`"
