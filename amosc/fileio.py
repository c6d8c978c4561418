"""Writing output files safely.

Every artifact amosc writes (``.amos`` programs, logits, JSON reports) goes through
:func:`atomic_write`:

- a regular file is replaced atomically: the bytes go to a temporary file beside it
  (after following symlinks, so a link keeps pointing at the new file), which is
  renamed into place; a reader never sees half a file, and a failure (disk full,
  interrupted) leaves the old file and no temporary behind;
- an existing non-regular target that can be written through (a character device
  such as ``/dev/null``, a FIFO) is written through, never replaced; any other
  (a directory, a block device, a socket) is refused;
- a read-only file (no write permission bit) is refused, not replaced;
- a new file gets the usual mode under the user's umask (``0666 & ~umask``), a replaced
  file keeps its mode;
- operating-system failures become :class:`~amosc.errors.AmoscError` naming the path.

:func:`check_output` refuses an output that is one of the same command's inputs; the
CLI calls it before doing any work.
"""

from __future__ import annotations

import io
import os
import stat
import tempfile

from .errors import AmoscError


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _os_error(path, exc: OSError) -> AmoscError:
    return AmoscError(f"{path}: cannot write: {exc.strerror or exc}")


def check_output(path, inputs=(), what: str = "output") -> None:
    """Refuse an output path that names a directory or one of ``inputs``."""
    path = os.fspath(path)
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        raise AmoscError(f"{path}: the {what} path names a directory; give a file name")
    if not os.path.exists(path):
        return
    for inp in inputs:
        if inp is None:
            continue
        try:
            same = os.path.samefile(path, inp)
        except OSError:
            continue
        if same:
            raise AmoscError(f"{path}: the {what} would overwrite the input {os.fspath(inp)}; "
                             "choose another output path")


def atomic_write(path, write_fn) -> None:
    """Call ``write_fn(fileobj)`` and put its bytes at ``path`` (see the module docstring)."""
    path = os.fspath(path)
    check_output(path)
    real = os.path.realpath(path)  # a symlink is followed: its target is what we replace
    try:
        st = os.stat(real)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise _os_error(path, exc) from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        if stat.S_ISCHR(st.st_mode) or stat.S_ISFIFO(st.st_mode):
            buf = io.BytesIO()  # writers may seek; a pipe or device cannot
            write_fn(buf)
            try:
                with open(real, "wb") as f:
                    f.write(buf.getvalue())
            except OSError as exc:
                raise _os_error(path, exc) from None
            return
        raise AmoscError(f"{path}: exists and is not a regular file; refusing to replace it")
    if st is not None and not (st.st_mode & 0o222 and os.access(real, os.W_OK)):
        raise AmoscError(f"{path}: the existing file is read-only; refusing to replace it "
                         "(remove it or choose another output path)")
    d = os.path.dirname(real)
    if not os.path.isdir(d):
        raise AmoscError(f"{path}: directory {os.path.dirname(os.path.abspath(path))} does not exist")
    mode = stat.S_IMODE(st.st_mode) if st is not None else 0o666 & ~umask()
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(real), dir=d)
    except OSError as exc:
        raise _os_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write_fn(f)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, real)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _os_error(path, exc) from None
        raise
