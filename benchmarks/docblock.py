"""Write a benchmark's table between two marker lines of a docs page (atomically)."""

import os

from amosc.ir.serialize import atomic_write


def write_block(path, begin: str, end: str, lines, heading: str = "") -> None:
    """Replace the text between ``begin`` and ``end`` in ``path`` with ``lines``, or append
    ``heading`` and the block when the markers are missing."""
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    block = "\n".join([begin, *lines, end])
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + (heading + "\n\n" if heading else "") + block + "\n"
    body = text.encode()
    atomic_write(path, lambda f: f.write(body))
