"""Outputs never clobber what the user did not ask to replace, and never touch the inputs.

* ``--out`` may not be, lie inside, or contain an input (model directory or file, data path);
  symlinks are resolved first.
* ``--overwrite`` replaces only a previous depthprune output (a directory holding
  ``depthprune.json`` or ``sweep.json``) or an empty directory.
* The final rename is no-clobber: the identity of ``--out`` (absent, or which inode) is
  recorded at the first check; if it changed when the result is committed (another run got
  there first) the run stops with "appeared meanwhile" and the other result stays. The check
  and the rename happen under an exclusive ``flock`` on the parent directory.
* Temporary siblings are named ``.NAME.tmp-PID-XXXX``; siblings left by a killed run (its PID
  gone, older than this run) are removed by the next run into the same parent, with a log line.
* The parent is created and probed (a temporary directory made and removed) before any model
  work, so a read-only or full location fails in the first second, not after scoring.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable, Iterator

from ..errors import DepthpruneError

log = logging.getLogger(__name__)

RUN_STARTED = time.time()
OUTPUT_MARKERS = ("depthprune.json", "sweep.json", "heads.json")
_FIRST_SEEN: dict[str, tuple[int, int, int] | None] = {}


def resolved(path: Path | str) -> Path:
    return Path(path).expanduser().resolve()


def identity(path: Path) -> tuple[int, int, int] | None:
    """Which file ``path`` is (device, inode, ctime: an inode number may be reused after a delete)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino, st.st_ctime_ns


def remember(path: Path) -> None:
    """Record what ``path`` was when this run first checked it (absent, or which inode)."""
    _FIRST_SEEN.setdefault(str(resolved(path)), identity(path))


def first_seen(path: Path) -> tuple[int, int, int] | None:
    return _FIRST_SEEN.get(str(resolved(path)), identity(path))


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def local_inputs(specs: Iterable[object]) -> list[Path]:
    """The inputs among model/data specs that are local paths (Hub ids and aliases are not)."""
    paths = []
    for spec in specs:
        if spec is None or not isinstance(spec, (str, Path)):
            continue
        path = Path(spec).expanduser()
        if path.exists():
            paths.append(path.resolve())
    return paths


def check_not_input(out: Path | str, inputs: Iterable[object], flag: str = "--out") -> None:
    """Refuse an output that is, lies inside, or contains one of the (local) inputs."""
    target = resolved(out)
    for inp in local_inputs(inputs):
        if target == inp:
            raise DepthpruneError(f"{flag} {out} is the input {inp} itself; the input is never overwritten, "
                                  f"choose another {flag}")
        if _is_within(target, inp):
            raise DepthpruneError(f"{flag} {out} lies inside the input {inp}; choose an {flag} outside it")
        if _is_within(inp, target):
            raise DepthpruneError(f"{flag} {out} contains the input {inp}; choose an {flag} that does not")


def check_replaceable(out: Path, overwrite: bool, *, kind: str = "directory", flag: str = "--out") -> None:
    """An existing ``out`` is replaced only with ``overwrite`` and only if it is ours (or empty)."""
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise DepthpruneError(f"output {kind} {out} already exists; choose another {flag} or pass --overwrite")
    if kind == "directory":
        if out.is_symlink() or not out.is_dir():
            raise DepthpruneError(f"output path {out} exists and is not a directory; --overwrite replaces only a "
                                  "previous depthprune output directory or an empty one")
        try:
            entries = [p.name for p in out.iterdir()]
        except OSError as exc:
            raise DepthpruneError(f"cannot read output directory {out}: {exc.strerror}") from None
        if entries and not any(m in entries for m in OUTPUT_MARKERS):
            raise DepthpruneError(f"output directory {out} is not a previous depthprune output (it has no "
                                  "depthprune.json, sweep.json or heads.json) and is not empty; --overwrite will not replace it")
    elif out.is_dir():
        raise DepthpruneError(f"output file {out} is an existing directory; choose another {flag}")


def prepare_parent(out: Path) -> Path:
    """mkdir -p the parent and prove it writable by making and removing a temporary sibling."""
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DepthpruneError(f"cannot write {out}: a file is in the way of its directory {parent}") from None
    except NotADirectoryError:
        raise DepthpruneError(f"cannot write {out}: part of {parent} is a file, not a directory") from None
    except OSError as exc:
        raise DepthpruneError(f"cannot create the output directory {parent}: {exc.strerror or exc}") from None
    if not parent.is_dir():
        raise DepthpruneError(f"cannot write {out}: {parent} is not a directory")
    try:
        probe = tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=parent)
        os.rmdir(probe)
    except OSError as exc:
        raise DepthpruneError(f"cannot write into {parent}: {exc.strerror or exc}") from None
    remove_stale_siblings(out)
    return parent


def tmp_prefix(out: Path) -> str:
    return f".{out.name}.tmp-{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_siblings(out: Path) -> list[Path]:
    """Remove ``.NAME.tmp-PID-*`` / ``.NAME.old-PID-*`` left by killed runs (PID gone, older than this run)."""
    removed = []
    try:
        candidates = list(out.parent.glob(f".{out.name}.tmp-*")) + list(out.parent.glob(f".{out.name}.old-*"))
    except OSError:
        return removed
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(?:tmp|old)-(\d+)-")
    for path in candidates:
        match = pattern.match(path.name)
        try:
            pid = int(match.group(1)) if match else -1
            if pid < 0:
                continue
            stale = os.lstat(path).st_mtime < RUN_STARTED and not _pid_alive(pid)
        except (ValueError, OSError):
            continue
        if pid == os.getpid() or not stale:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
        log.warning("removed %s, a temporary output left by an interrupted run", path)
        removed.append(path)
    return removed


@contextlib.contextmanager
def parent_lock(parent: Path) -> Iterator[None]:
    """Exclusive flock on the parent directory (released by the kernel even on kill -9)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def appeared_meanwhile(out: Path) -> DepthpruneError:
    return DepthpruneError(f"output {out} appeared meanwhile (another run wrote it); it was left as it is "
                           "and this run's result was not saved")


def commit(tmp: Path, out: Path, *, overwrite: bool, kind: str = "directory") -> None:
    """Move ``tmp`` to ``out`` if ``out`` is still what this run first saw; never clobber anything else."""
    expected = first_seen(out)
    with parent_lock(out.parent):
        now = identity(out)
        if now is not None and now != expected:
            raise appeared_meanwhile(out)
        if now is None:
            if expected is not None and not overwrite:
                raise appeared_meanwhile(out)
            _rename_noreplace(tmp, out, kind)
            return
        check_replaceable(out, overwrite, kind=kind)
        if kind == "directory":
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
            os.rename(out, old / out.name)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    _FIRST_SEEN[str(resolved(out))] = identity(out)


def _rename_noreplace(tmp: Path, out: Path, kind: str) -> None:
    try:
        if kind == "directory":
            os.rename(tmp, out)  # under the lock, and out is absent: nothing to clobber
        else:
            try:
                os.link(tmp, out)  # fails if out exists
                os.unlink(tmp)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                    raise
                os.rename(tmp, out)  # no hard links here: under the lock, out was absent
    except FileExistsError:
        raise appeared_meanwhile(out) from None
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise appeared_meanwhile(out) from None
        raise DepthpruneError(f"cannot write {out}: {exc.strerror or exc}") from None
