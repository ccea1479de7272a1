"""Atomic directory writes and file hashing: a killed job never leaves a half-written artifact.

`atomic_directory(target)` builds the artifact in a sibling `.TARGET.partial-PID-XXXX` directory and
renames it onto `target` only when the block succeeds (after fsync), so `target` is either absent, the
previous complete artifact, or the new complete one. An exception removes the partial directory; a
SIGKILL or power cut cannot, so it stays behind as `.TARGET.partial-*` (never loadable: it has no
manifest). Those leftovers are *not* removed automatically (another export into the same directory may
own one); `stale_siblings` lists them and the exporter mentions them in a one-line notice.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

from .errors import ArtifactError, InputError

log = logging.getLogger("trio_edge")

PARTIAL_TAG = ".partial-"
OLD_TAG = ".old-"


def _prefix(target: Path, tag: str) -> str:
    return f".{target.name}{tag}{os.getpid()}-"


def _pid_of(sibling: Path, target: Path) -> int | None:
    for tag in (PARTIAL_TAG, OLD_TAG):
        head = f".{target.name}{tag}"
        if sibling.name.startswith(head):
            pid = sibling.name[len(head):].split("-", 1)[0]
            return int(pid) if pid.isdigit() else None
    return None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def stale_siblings(target: str | Path) -> list[Path]:
    """Leftover `.TARGET.partial-*` / `.TARGET.old-*` directories next to `target` (interrupted exports),
    except this process's own."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    mine = {_prefix(target, PARTIAL_TAG), _prefix(target, OLD_TAG)}
    found = []
    for tag in (PARTIAL_TAG, OLD_TAG):
        for path in target.parent.glob(f".{target.name}{tag}*"):
            if path.is_dir() and not any(path.name.startswith(p) for p in mine):
                found.append(path)
    return sorted(found)


def stale_notice(target: str | Path) -> str | None:
    """One line about leftovers of interrupted exports next to `target`, or None if there are none."""
    target = Path(target)
    stale = stale_siblings(target)
    if not stale:
        return None
    running = [p for p in stale if _alive(_pid_of(p, target))]
    names = ", ".join(p.name for p in stale[:3]) + (f" and {len(stale) - 3} more" if len(stale) > 3 else "")
    if running:
        advice = (f"{len(running)} of them may belong to an export still running (its process is alive); delete "
                  f"the others if nothing else is writing {target.name}")
    else:
        advice = f"their processes are gone; delete them if nothing else is writing {target.name}"
    return (f"notice: {len(stale)} leftover partial export director{'y' if len(stale) == 1 else 'ies'} next to "
            f"{target} ({names}) from an interrupted write (e.g. a killed trio-export); never loadable; {advice}")


def _first_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_parent(path: str | Path, what: str) -> None:
    """Refuse `path` up front when its folder cannot be created or written (a file in the way, no permission)."""
    path = Path(path)
    ancestor = _first_existing(path.parent)
    if not ancestor.is_dir():
        raise InputError(f"cannot write {what} {path}: {ancestor} is a file, not a directory; pick another path")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(f"cannot write {what} {path}: no permission to write in {ancestor}; pick another path")


def check_output_file(path: str | Path, what: str, suffixes: tuple[str, ...] = ()) -> Path:
    """Refuse an output file path before the work that produces it: a directory in its place, a folder that
    cannot be written, or (when `suffixes` is given) an extension the writer does not know."""
    path = Path(path)
    if path.is_dir():
        example = path / ("out" + (suffixes or (".json",))[0])
        raise InputError(f"{what} {path} is a directory; pass a file path, e.g. {example}")
    if suffixes and path.suffix.lower() not in suffixes:
        raise InputError(f"{what} {path} has extension {path.suffix or '(none)'!r}; use one of {', '.join(suffixes)}")
    check_writable_parent(path, what)
    return path


def check_output_directory(target: str | Path, *, force: bool, marker: str) -> bool:
    """Refuse an output directory before any work unless it is new, empty, or (with `force`) an earlier artifact
    holding `marker`; never the current directory or a parent of it. Returns whether something is replaced."""
    target = Path(target)
    here = Path.cwd().resolve()
    if target.resolve() == here or target.resolve() in here.parents:
        raise InputError(f"output directory {target} is the current directory or a parent of it, which cannot be "
                         f"replaced; pass a new directory, e.g. {target / 'export'}")
    if target.is_symlink() and not target.exists():
        raise InputError(f"output directory {target} is a broken symbolic link; remove it or pick another path")
    if target.exists():
        if not target.is_dir():
            raise InputError(f"output directory {target} is a file, not a directory; pass a new directory path")
        if any(target.iterdir()):  # an empty directory has nothing to lose
            if not (target / marker).is_file():
                raise InputError(f"output directory {target} is a directory that is not an earlier export (it has "
                                 f"no {marker}); --force only replaces exports, so pick a new path or empty it "
                                 "yourself")
            if not force:
                raise InputError(f"{target} already exists; pass --force to replace it")
    check_writable_parent(target, "the output directory")
    return target.exists()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_directory(target: str | Path, *, overwrite: bool = False):
    """Yield a temporary sibling directory; rename it onto `target` only if the block succeeds.

    With `overwrite`, an existing `target` stays complete and loadable until the final rename, which
    swaps the two directories in one step where the OS allows it (Linux renameat2 RENAME_EXCHANGE)."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise ArtifactError(f"{target} already exists; pass --force to replace it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        notice = stale_notice(target)
        if notice:
            log.warning(notice)
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(target, PARTIAL_TAG), dir=target.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's 0700 would hide the artifact from other users
    except OSError as error:
        raise ArtifactError(f"cannot write {target}: {error.strerror or error}; pick a writable directory") from None
    try:
        yield tmp
        _fsync_tree(tmp)
        if target.exists() or target.is_symlink():
            if _exchange(tmp, target):  # tmp now holds the old artifact
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                trash = Path(tempfile.mkdtemp(prefix=_prefix(target, OLD_TAG), dir=target.parent))
                os.replace(target, trash / "old")
                os.replace(tmp, target)
                shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unavailable."""
    if not os.uname().sysname == "Linux" or not b.is_dir() or b.is_symlink():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    return False  # EINVAL / ENOSYS (filesystem or kernel without it): fall back to two renames


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under `root` to disk before it is renamed into place."""
    for directory, _, names in os.walk(root):
        for name in names:
            try:
                with open(os.path.join(directory, name), "rb") as handle:
                    os.fsync(handle.fileno())
            except OSError:
                pass
        _fsync_dir(Path(directory))


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
