"""Checks of input and output paths, run before any work starts, with messages that say the fix."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def as_path(path: object, what: str) -> Path:
    """``Path(path)`` for a ``str`` / ``os.PathLike``; a clear ``TypeError`` for anything else.

    Raises:
        TypeError: ``path`` is ``None`` or not a path (the message names ``what``).
    """
    if isinstance(path, (str, os.PathLike)) and not isinstance(path, bytes):
        text = os.fspath(path)
        if isinstance(text, str) and text:
            return Path(text).expanduser()
        if isinstance(text, str):
            raise ValueError(f"{what} is an empty string; give a file name")
    raise TypeError(f"{what} must be a file path (str or os.PathLike), got {path!r}")


def _nearest_existing(path: Path) -> Path:
    probe = path.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def check_output_file(path: object, what: str = "output file") -> Path:
    """Check that ``path`` can be written as a regular file, before anything is computed.

    Missing parent directories are allowed (they are created when the file is written) as long as
    the nearest existing ancestor is a writable directory.

    Returns:
        The path as a :class:`pathlib.Path`.

    Raises:
        TypeError: not a path.
        IsADirectoryError: ``path`` is a directory.
        FileExistsError: ``path`` exists but is not a regular file (a device, a socket, ...).
        NotADirectoryError: a parent of ``path`` is a file.
        PermissionError: the directory cannot be written.
    """
    p = as_path(path, what)
    if p.is_dir():
        raise IsADirectoryError(
            f"{what} {str(p)!r} is a directory; give a file name inside it, e.g. {str(p / 'masks.salm')!r}"
        )
    if p.exists() and not p.is_file():
        raise FileExistsError(f"{what} {str(p)!r} exists and is not a regular file; choose another name")
    _check_writable_dir(p.parent, what, p)
    return p


def check_output_dir(path: object, what: str = "output directory") -> Path:
    """Check that ``path`` is a directory (existing or creatable) that can be written.

    Raises:
        TypeError: not a path.
        NotADirectoryError: ``path`` (or one of its parents) is a file.
        PermissionError: the directory cannot be written.
    """
    p = as_path(path, what)
    if p.exists() and not p.is_dir():
        raise NotADirectoryError(
            f"{what} {str(p)!r} exists and is a file, not a directory; give a directory name "
            "(it is created if missing)"
        )
    _check_writable_dir(p, what, p)
    return p


def _check_writable_dir(directory: Path, what: str, target: Path) -> None:
    anchor = _nearest_existing(directory)
    if not anchor.is_dir():
        raise NotADirectoryError(
            f"{what} {str(target)!r} cannot be created: {str(anchor)!r} is a file, not a directory"
        )
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise PermissionError(
            f"{what} {str(target)!r} cannot be written: no write permission in {str(anchor)!r}; "
            "choose a directory you can write to"
        )


def current_umask() -> int:
    """The process umask (read from ``/proc`` where possible: setting it to read it is racy)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode(path: Path) -> int:
    """The mode ``open(path, "w")`` would leave: an existing file keeps its mode, a new one gets
    ``0o666`` less the umask (``tempfile.mkstemp`` makes ``0o600`` files, kept on rename)."""
    try:
        st = path.stat()
    except OSError:
        return 0o666 & ~current_umask()
    return stat.S_IMODE(st.st_mode) if stat.S_ISREG(st.st_mode) else 0o666 & ~current_umask()
