"""Publishing a finished temporary file under its final name, atomically, never replacing an
existing file: the three methods of :class:`Publish` (livegen.output.folder's module doc says
when each is used and what a folder watcher sees)."""

from __future__ import annotations

import ctypes
import enum
import errno
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("livegen.output.folder")

# errno values meaning "this file system does not offer the method" (not "the name is taken")
_NO_RENAME_NOREPLACE = {errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP}
_NO_LINK = {errno.EPERM, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV}


class Publish(enum.Enum):
    """How a finished temporary file gets its final name (see the module doc)."""

    RENAME_NOREPLACE = "rename-noreplace"
    LINK = "link"
    RESERVE = "reserve"


class _Unsupported(Exception):
    """The file system (or OS) does not offer this publishing method."""


def _rename_noreplace_fn() -> Callable[[bytes, bytes], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        fn = libc.renameat2
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
        return lambda src, dst: fn(-100, src, -100, dst, 1)  # AT_FDCWD, RENAME_NOREPLACE
    if sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        fn = libc.renamex_np
        fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
        return lambda src, dst: fn(src, dst, 0x4)  # RENAME_EXCL
    return None


_RENAME_NOREPLACE = _rename_noreplace_fn()


def available_methods() -> tuple[Publish, ...]:
    """The publishing methods this platform offers, in the order they are tried."""
    first = (Publish.RENAME_NOREPLACE,) if _RENAME_NOREPLACE is not None else ()
    return (*first, Publish.LINK, Publish.RESERVE)


def publish(method: Publish, tmp: Path, final: Path) -> None:
    """Give ``tmp`` the name ``final`` atomically without ever replacing an existing file.

    Raises ``FileExistsError`` when ``final`` exists, ``_Unsupported`` when the file system
    does not offer ``method``, any other ``OSError`` as it comes.
    """
    if method is Publish.RENAME_NOREPLACE:
        if _RENAME_NOREPLACE is None:
            raise _Unsupported(method)
        if _RENAME_NOREPLACE(os.fsencode(tmp), os.fsencode(final)) != 0:
            code = ctypes.get_errno()
            if code in _NO_RENAME_NOREPLACE:
                raise _Unsupported(method)
            raise OSError(code, os.strerror(code), str(final))
    elif method is Publish.LINK:
        try:
            os.link(tmp, final)
        except FileExistsError:
            raise
        except OSError as exc:
            if exc.errno in _NO_LINK:
                raise _Unsupported(method) from exc
            raise
        try:
            os.unlink(tmp)
        except OSError:  # the file is published; a leftover temp name is removed at the next start
            log.warning("Could not remove the temporary file %s.", tmp)
    else:
        fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # FileExistsError: taken
        os.close(fd)
        try:
            os.replace(tmp, final)  # over the empty file we just created
        except OSError:
            _unlink_quietly(final)
            raise


def _unlink_quietly(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass
