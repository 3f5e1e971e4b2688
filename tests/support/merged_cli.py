"""`depth ARGV` run in this process with stdout and stderr in one stream, in the order a
terminal shows them (capsys keeps the two apart, so it cannot tell what came first)."""

from __future__ import annotations

import contextlib
import io

from depth.cli import main


def merged(*argv: str) -> tuple[int, str]:
    """(exit status, everything `depth ARGV` printed, stdout and stderr interleaved)."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
        status = main(list(argv))
    return status, text.getvalue()
