"""Atomic file writes: a temporary file in the same folder, flushed, fsynced, then replaced.

Readers never see a half-written file: the temporary name starts with a dot and ends in
``.partial`` so that listings skip it, and ``os.replace`` swaps the finished file in. Without
``overwrite`` the finished file is hard-linked to its name, which fails if the name was taken
meanwhile (another run writing the same output): nothing is ever replaced by surprise. The
temporary name holds the writer's process id, so a temporary file whose writer is gone (a
killed run) can be told from one still being written and removed
(:func:`remove_stale_partials`).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from napari_unet.core.errors import InputError

PARTIAL_SUFFIX = ".partial"
STALE_SECONDS = 7 * 24 * 3600  # a temporary file this old is stale whoever wrote it
_WRITER = re.compile(r"\.pid(?P<pid>\d+)-[0-9a-f]+\.partial$")


def is_partial(path: Path) -> bool:
    """True for temporary files left by an interrupted atomic write."""
    return path.name.startswith(".") and path.name.endswith(PARTIAL_SUFFIX)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it onto ``path``.

    The caller writes the whole file to the yielded path. If the block raises, the
    temporary file is removed and ``path`` is left untouched.

    Parameters
    ----------
    path : path-like
        The final name.
    overwrite : bool
        Replace an existing ``path``. Without it, a ``path`` that exists when the file is
        finished (created meanwhile by another writer) raises InputError and is kept.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.pid{os.getpid()}-{secrets.token_hex(4)}{PARTIAL_SUFFIX}")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            handle.flush()
            os.fsync(handle.fileno())
        # some writers (safetensors) create owner-only files: give the file the permissions
        # of the one it replaces, or those a plain open() would give a new file
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else _new_file_mode())
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_new(tmp, path)
        _fsync_folder(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()


def _link_new(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the name ``path`` unless ``path`` exists, atomically where the file system
    has hard links (FAT and some network shares do not: there a last check precedes the
    rename)."""
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        pass
    except OSError:  # no hard links here
        if not path.exists():
            os.replace(tmp, path)
            return
    raise InputError(
        f"{path} was created by another program while this one worked; nothing was replaced"
    )


def remove_stale_partials(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files and folders of interrupted writes in ``folder``.

    Only our own temporary files and folders (:func:`is_partial`: an OME-Zarr being built, a
    stack's labels on disk) whose writer process is gone, or that are older than
    :data:`STALE_SECONDS`, are removed: another run writing at this moment keeps its own.

    Returns
    -------
    list of Path
        The files removed.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        if not is_partial(path):
            continue
        match = _WRITER.search(path.name)
        try:
            old = time.time() - path.stat().st_mtime > STALE_SECONDS
            if old or match is None or not _process_alive(int(match["pid"])):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed.append(path)
        except OSError:  # gone meanwhile, or not ours to remove
            continue
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name != "posix":  # no signal 0 on Windows: trust the age limit only
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def check_output(
    path: str | os.PathLike[str],
    inputs: Iterable[str | os.PathLike[str]] = (),
    *,
    overwrite: bool = False,
) -> Path:
    """Refuse, before any work is done, an output that must not or cannot be written.

    Raises :class:`~napari_unet.core.errors.InputError` when ``path`` exists and
    ``overwrite`` is false, is a folder, is the same file as one of ``inputs`` (through a
    symlink, a hard link or a case-insensitive file system: a user's file is never written
    over), or lies in a folder that cannot be created or written to.

    Returns
    -------
    Path
        ``path`` as a Path.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{path} is a folder; give a file name for the output")
    if path.exists():
        for source in inputs:
            if Path(source).exists() and os.path.samefile(path, source):
                raise InputError(
                    f"{path} is one of the inputs ({source}); choose another output, "
                    "napari-unet never writes over its input files"
                )
        if not overwrite:
            raise InputError(f"{path} exists; pass --overwrite to replace it")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"cannot write {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {path}: the folder {folder} is read-only for you")
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _new_file_mode() -> int:
    """0o666 less the process's umask (read by setting it and putting it back)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_folder(folder: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
