"""Progress bars for long work: shown on an interactive terminal, silent when piped or in CI."""

from __future__ import annotations

import os
import sys


def enabled() -> bool:
    if os.environ.get("AMOSC_PROGRESS") in ("0", "1"):
        return os.environ["AMOSC_PROGRESS"] == "1"
    return sys.stderr.isatty() and not os.environ.get("CI")


def progress(iterable, desc: str = "", total=None):
    if not enabled():
        return iterable
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr)
