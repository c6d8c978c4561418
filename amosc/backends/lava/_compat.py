"""Make lava-nc 0.10.0 import on Python 3.11 without touching site-packages.

Two lava modules fail on 3.11 (docs/lava.md):

1. ``lava.magma.compiler.var_model`` declares dataclass fields whose defaults are
   ``ByteEncoder()`` instances; 3.11 rejects such unhashable defaults.
2. ``lava.magma.runtime.message_infrastructure.multiprocessing`` calls
   ``multiprocessing.set_start_method('fork')`` at import, which raises when the
   start method is already fixed (pytest plugins, a second import).

:func:`install` puts a ``sys.meta_path`` finder in front that loads exactly those
two modules from their installed source with a textual fix applied in memory.
Every fix must match, or the import fails naming the module: a different lava
release needs a look, not a silent half-patch.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import multiprocessing
import re
import sys
import warnings

LAVA_VERSION = "0.10.0"


def _fix_var_model(src: str) -> str:
    out, n = re.subn(r":\s*ByteEncoder\s*=\s*ByteEncoder\(\)",
                     ": ByteEncoder = _amosc_field(default_factory=ByteEncoder)", src)
    if n == 0:
        raise ImportError("amosc lava compat: no ByteEncoder() defaults found in var_model")
    head, sep, rest = out.partition("\nfrom dataclasses import")
    if not sep:
        raise ImportError("amosc lava compat: var_model no longer imports dataclasses")
    return head + "\nfrom dataclasses import field as _amosc_field" + sep + rest


def _fix_multiprocessing(src: str) -> str:
    old = "mp.set_start_method('fork')"
    if old not in src:
        raise ImportError("amosc lava compat: set_start_method call not found in lava's multiprocessing")
    return src.replace(old, "_amosc_fork_start_method()").replace(
        "import platform", f"import platform\nfrom {__name__} import "
        "fork_start_method as _amosc_fork_start_method", 1)


def fork_start_method() -> None:
    """Lava's runtime needs the 'fork' start method; set it unless it already is."""
    current = multiprocessing.get_start_method(allow_none=True)
    if current == "fork":
        return
    if current is not None:
        warnings.warn(f"multiprocessing start method was {current!r}; Lava needs 'fork', switching",
                      RuntimeWarning, stacklevel=2)
    multiprocessing.set_start_method("fork", force=True)


PATCHES = {
    "lava.magma.compiler.var_model": _fix_var_model,
    "lava.magma.runtime.message_infrastructure.multiprocessing": _fix_multiprocessing,
}


class _PatchedLoader(importlib.abc.Loader):
    def __init__(self, origin: str, fix):
        self.origin, self.fix = origin, fix

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        with open(self.origin, encoding="utf-8") as f:
            src = self.fix(f.read())
        exec(compile(src, self.origin, "exec", dont_inherit=True), module.__dict__)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        fix = PATCHES.get(fullname)
        if fix is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not spec.origin:
            return None
        spec.loader = _PatchedLoader(spec.origin, fix)
        return spec


def install() -> None:
    """Idempotent; call before the first ``import lava``."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def lava_problem() -> str | None:
    """None when lava imports here, else why not (for ``amosc backends``)."""
    install()
    try:
        from importlib.metadata import version
        v = version("lava-nc")
    except Exception:
        return ("lava-nc is not installed; run scripts/setup.sh (it installs lava-nc==0.10.0 "
                "with --no-deps --ignore-requires-python)")
    if v != LAVA_VERSION:
        return f"lava-nc {v} is installed; amosc supports {LAVA_VERSION}"
    try:
        import lava.magma.core.run_configs  # noqa: F401
        import lava.proc.dense.process  # noqa: F401
    except Exception as exc:
        return f"lava-nc fails to import: {type(exc).__name__}: {exc}"
    return None
