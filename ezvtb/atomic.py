"""Atomic outputs: a file ezvtb writes appears complete under its name, or not at all.

One mechanism for every writer (`AtomicOutput`):

1. a temporary name in the target's folder, unique to this attempt and unambiguous
   (``.NAME.ezvtb-PID-TOKEN.tmp`` + the target's suffix; `temp_name`), created exclusively with
   mode ``0o666`` minus the umask, like any other new file;
2. the writer fills it (by path, or through `open`);
3. `commit` checks it (an optional `verify` callback: frames, size), flushes it to the disk
   (fsync of the file, then of the folder after the rename) and renames it over the target
   (or, with ``replace=False``, to the target only when that name is free);
4. any failure removes the temporary file, leaves an existing target untouched and raises
   `OutputError` naming the target.

Temporary files still registered when the interpreter exits (an exception, SIGINT, or SIGTERM
turned into an exception by the command line) are removed at exit.
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import os
import secrets
import shutil
import threading
from pathlib import Path
from typing import IO, Any, Callable, Iterator

TEMP_MARK = ".ezvtb-"
_LIVE: set[tuple[int, str]] = set()  # (pid, path): a forked child never removes its parent's files
_LIVE_LOCK = threading.Lock()


class OutputError(OSError):
    """An output could not be written completely; the message names the file (`errno` kept)."""

    def __init__(self, message: str, errno_: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_


def attempt_token() -> str:
    """A token that names one write attempt (process id + random), usable in a file name."""
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def temp_name(path: str | os.PathLike, token: str) -> Path:
    """The temporary sibling of `path` for the attempt `token` (keeps the suffix, for encoders)."""
    p = Path(path)
    return p.with_name(f".{p.name}{TEMP_MARK}{token}.tmp{p.suffix}")


def _register(tmp: Path) -> None:
    with _LIVE_LOCK:
        _LIVE.add((os.getpid(), str(tmp)))


def _unregister(tmp: Path) -> None:
    with _LIVE_LOCK:
        _LIVE.discard((os.getpid(), str(tmp)))


@atexit.register
def remove_temporaries() -> None:
    """Remove every temporary output of this process that was neither committed nor discarded."""
    pid = os.getpid()
    with _LIVE_LOCK:
        live = [t for p, t in _LIVE if p == pid]
        _LIVE.clear()
    for t in live:
        with contextlib.suppress(OSError):
            if os.path.isdir(t) and not os.path.islink(t):
                shutil.rmtree(t)
            else:
                os.unlink(t)


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's data (or a folder's entries) to the disk; folders that refuse it are skipped."""
    is_dir = os.path.isdir(path)
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if is_dir else 0))
    except OSError:
        if is_dir:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        if not is_dir or e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


class AtomicOutput:
    """One attempt at writing `path` (module docstring). Use as a context manager or call
    `commit` / `discard` yourself; leaving the ``with`` block by an exception discards.

    token: names the attempt (default: `attempt_token()`); whoever knows it can remove exactly
    this attempt's temporary file (`temp_name(path, token)`), e.g. after the writer process died.
    """

    def __init__(self, path: str | os.PathLike, token: str | None = None) -> None:
        self.path = Path(path)
        self.token = token or attempt_token()
        self.tmp = temp_name(self.path, self.token)
        self.done = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as e:
            raise OutputError(f"cannot create a file next to {str(self.path)!r}: {e.strerror or e}", e.errno) from None
        os.close(fd)
        _register(self.tmp)

    def open(self, mode: str = "wb") -> IO:
        """The temporary file opened for writing."""
        return open(self.tmp, mode)

    def commit(self, verify: Callable[[Path], Any] | None = None, *, dest: str | os.PathLike | None = None,
               replace: bool = True) -> Path:
        """Check, flush and rename the temporary file to `dest` (default: the target); returns it.

        verify(tmp) raises when what was written is incomplete. replace=False never overwrites:
        an existing `dest` raises FileExistsError (the temporary file is kept for another `commit`).
        """
        dest = Path(dest) if dest is not None else self.path
        try:
            if verify is not None:
                verify(self.tmp)
            fsync_path(self.tmp)
            if replace:
                os.replace(self.tmp, dest)
            else:
                _rename_no_replace(self.tmp, dest)
            fsync_path(dest.parent)
        except FileExistsError as e:
            if replace:
                self._fail(dest, e)
            raise
        except BaseException as e:  # noqa: BLE001 - any stop (an interrupt too) discards the temporary file
            self._fail(dest, e)
        self.done = True
        _unregister(self.tmp)
        return dest

    def _fail(self, dest: Path, e: BaseException) -> None:
        self.discard()
        if not isinstance(e, Exception):
            raise e
        raise OutputError(f"{str(dest)!r} could not be written completely ({e}); {kept(dest)}",
                          getattr(e, "errno", None)) from e

    def discard(self) -> None:
        """Remove the temporary file (nothing is written under the target's name)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)
        _unregister(self.tmp)
        self.done = True

    def __enter__(self) -> "AtomicOutput":
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc_type is not None or not self.done:
            self.discard()
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):  # a write failed: name the file
            raise OutputError(f"{str(self.path)!r} could not be written ({exc}); {kept(self.path)}", exc.errno) from exc


class AtomicFolder:
    """A folder of files (a PNG sequence) that appears complete or not at all: files go into a
    temporary sibling folder (`temp_name`), each flushed to the disk, and `commit` renames the
    folder into place. A folder is never written into or replaced: an existing non-empty target
    is refused here, and one that appears meanwhile makes `commit` pick a free ``NAME.TAG`` name.
    """

    def __init__(self, path: str | os.PathLike, token: str | None = None) -> None:
        self.path = Path(path)
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise OutputError(f"{str(self.path)!r} already exists and is not an empty folder; ezvtb never writes "
                              f"into or over it, pick a new folder name")
        self.token = token or attempt_token()
        self.tmp = temp_name(self.path, self.token)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(self.tmp)
        except OSError as e:
            raise OutputError(f"cannot create a folder next to {str(self.path)!r}: {e.strerror or e}",
                              e.errno) from None
        _register(self.tmp)
        self.files = 0
        self.done = False

    def write(self, name: str, data: bytes) -> None:
        """One file of the folder, flushed to the disk; OutputError naming the folder on failure."""
        if os.path.basename(name) != name or name in ("", ".", ".."):
            raise ValueError(f"name: expected a plain file name, got {name!r}")
        try:
            with open(self.tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise OutputError(f"{str(self.path)!r} could not be written ({e}); {kept(self.path)}", e.errno) from None
        self.files += 1

    def commit(self, tag: str = "partial") -> Path:
        """Rename the folder into place (a free ``NAME.TAG`` when the name was taken meanwhile)."""
        dest = self.path
        try:
            fsync_path(self.tmp)
            for _ in range(100):
                try:
                    if os.path.lexists(dest) and not (dest.is_dir() and not any(dest.iterdir())):
                        raise FileExistsError(str(dest))
                    os.rename(self.tmp, dest)  # replaces only an empty folder
                    break
                except (FileExistsError, OSError) as e:
                    if isinstance(e, OSError) and not isinstance(e, FileExistsError) \
                            and e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                    dest = free_name(self.path, tag)
            fsync_path(dest.parent)
        except BaseException as e:
            self.discard()
            if not isinstance(e, Exception):
                raise
            raise OutputError(f"{str(self.path)!r} could not be written completely ({e}); {kept(self.path)}",
                              getattr(e, "errno", None)) from e
        self.done = True
        _unregister(self.tmp)
        return dest

    def discard(self) -> None:
        """Remove the temporary folder and what it holds."""
        shutil.rmtree(self.tmp, ignore_errors=True)
        _unregister(self.tmp)
        self.done = True


def _rename_no_replace(src: Path, dest: Path) -> None:
    """Rename that raises FileExistsError instead of replacing (a hard link where the file system has them)."""
    try:
        os.link(src, dest)
    except FileExistsError:
        raise
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(dest):
            raise FileExistsError(errno.EEXIST, "file exists", str(dest)) from None
        os.rename(src, dest)
        return
    os.unlink(src)


def kept(dest: str | os.PathLike) -> str:
    """What a failed write left at `dest`, for error messages."""
    return "the previous file is unchanged" if os.path.exists(dest) else "nothing was written under that name"


def free_name(path: str | os.PathLike, tag: str) -> Path:
    """`path` with ``.TAG`` before the suffix (``.TAG-2``, ... when taken): a name no file has yet."""
    p = Path(path)
    for k in range(1, 10_000):
        cand = p.with_name(f"{p.stem}.{tag}{'' if k == 1 else f'-{k}'}{p.suffix}")
        if not os.path.lexists(cand):
            return cand
    raise OutputError(f"no free name like {p.stem}.{tag}{p.suffix} in {str(p.parent)!r}")


def commit_without_replacing(out: AtomicOutput, tag: str, verify: Callable[[Path], Any] | None = None) -> Path:
    """Commit to the target if that name is free, else to a free ``STEM.TAG.SUFFIX`` sibling."""
    dest = out.path
    for _ in range(100):
        try:
            return out.commit(verify, dest=dest, replace=False)
        except FileExistsError:
            dest = free_name(out.path, tag)
    out.discard()
    raise OutputError(f"no free name for {str(out.path)!r}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb",
                 verify: Callable[[Path], Any] | None = None) -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; on success it replaces `path` atomically.

    On an exception the temporary file is removed and `path` is left untouched; a failed write,
    flush or rename raises `OutputError` naming `path`.
    """
    with AtomicOutput(path) as out:
        with out.open(mode) as f:
            yield f
            f.flush()
        out.commit(verify)
