"""The one output layer: every file any command writes goes through here.

A command declares its outputs up front as :class:`OutputSpec` objects (the planner does it before any model or
data work) and writes them in one :func:`transaction`. The guarantees, for every command and every executor:

* **Never an input.** No output is, lies inside, or contains an input of the run (model, data, repair data,
  scores file, recipe source, task data, the directory being repaired or reported on); symlinks are resolved.
* **Never clobbered.** An existing output is replaced only with ``overwrite`` and only when it is this command's
  own earlier output (its record says so: ``"output": {"command": ...}``) or an empty directory. A foreign
  folder or file is refused with a sentence that does not suggest ``--overwrite``.
* **Atomic.** Everything is written into a temporary sibling (``.NAME.tmp-PID-XXXX``) and renamed into place
  only when the whole output is complete (and, where the pipeline verifies it, read back). A failure, Ctrl-C or
  SIGTERM leaves nothing behind. The final rename is no-clobber: what ``--out`` was when the run first checked it
  (absent, or which inode) is recorded, and an output that appeared or changed meanwhile (another run) is left as
  it is. The check and the rename happen under an exclusive ``flock`` on the parent directory.
* **Early.** The parent is created and proved writable (a probe made and removed) at planning time, so a
  read-only or full location fails in the first second.
* **Clean.** Temporary siblings of killed runs (``.NAME.tmp-PID-*``, ``.NAME.old-PID-*``, ``.NAME.probe-PID-*``,
  and the ``.NAME.*.tmp`` files of older depthprune versions) whose process is gone are removed by the next run
  into the same parent.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from depthprune._version import __version__
from depthprune.errors import DepthpruneError

log = logging.getLogger(__name__)

RUN_STARTED = time.time()
LEGACY_STALE_AGE_S = 24 * 3600  # older depthprune temporaries carry no PID: removed only when a day old
MAX_RECORD_BYTES = 64 << 20
_FIRST_SEEN: dict[str, tuple[int, int, int] | None] = {}

# The file inside a directory output that records which command wrote it.
DIRECTORY_RECORDS = {"prune": "depthprune.json", "repair": "depthprune.json", "sweep": "sweep.json",
                     "heads": "heads.json", "report": "report.json"}
COMMAND_WORDS = {"prune": "`depthprune prune` output", "repair": "`depthprune repair` output",
                 "sweep": "`depthprune sweep` output", "heads": "`depthprune heads` output",
                 "report": "`depthprune report` output", "score": "`depthprune score` scores file",
                 "eval": "`depthprune eval` results file", "bench": "`depthprune bench` results file"}


# --------------------------------------------------------------------------------------------- identities


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
    _FIRST_SEEN.setdefault(str(resolved(path)), identity(Path(path).expanduser()))


def first_seen(path: Path) -> tuple[int, int, int] | None:
    return _FIRST_SEEN.get(str(resolved(path)), identity(Path(path).expanduser()))


def forget_all() -> None:
    """Start a new run's record of first-seen identities (the CLI does this once per command)."""
    _FIRST_SEEN.clear()


# --------------------------------------------------------------------------------------------- inputs


def _is_within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def local_inputs(specs: Iterable[object]) -> list[Path]:
    """The inputs among specs that are local paths (Hub ids, aliases and ``hf:`` specs are not)."""
    paths = []
    for spec in specs:
        if spec is None or not isinstance(spec, (str, Path)) or str(spec).startswith("hf:"):
            continue
        path = Path(spec).expanduser()
        if path.exists() or path.is_symlink():
            paths.append(path.resolve())
    return paths


def check_not_input(out: Path | str, inputs: Iterable[object], flag: str = "--out") -> None:
    """Refuse an output that is, lies inside, or contains one of the (local) inputs."""
    target = resolved(out)
    for inp in local_inputs(inputs):
        if target == inp:
            raise DepthpruneError(f"{flag} {out} is the input {inp} itself; inputs are never written over, "
                                  f"choose another {flag}")
        if _is_within(target, inp):
            raise DepthpruneError(f"{flag} {out} lies inside the input {inp}; inputs are never written into, "
                                  f"choose an {flag} outside it")
        if _is_within(inp, target):
            raise DepthpruneError(f"{flag} {out} contains the input {inp}; choose an {flag} that does not")


# --------------------------------------------------------------------------------------------- ownership


def read_record(path: Path) -> dict | None:
    """A JSON object from ``path``, or None when it is missing, huge, unreadable or not a JSON object."""
    try:
        if not path.is_file() or path.stat().st_size > MAX_RECORD_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def record_owner(data: dict | None, name: str = "") -> str | None:
    """The command that wrote a record (older depthprune versions recorded none: recognised by their fields)."""
    if data is None:
        return None
    marker = data.get("output")
    if isinstance(marker, dict) and isinstance(marker.get("command"), str):
        return marker["command"]
    if "removed_layers" in data and "num_layers_before" in data:
        return "repair" if isinstance(data.get("repair"), dict) and data["repair"].get("repaired_from") else "prune"
    if name == "sweep.json" and "points" in data:
        return "sweep"
    if name == "heads.json" and "scores" in data and "patterns" in data:
        return "heads"
    if "scores" in data and "removal_order" in data and "metric" in data:
        return "score"
    if "workloads" in data or ("baseline" in data and "candidate" in data):
        return "bench"
    if "lm_eval_version" in data or ("ppl" in data and "tokens" in data and "model" in data):
        return "eval"
    return None


def directory_owner(path: Path) -> str | None:
    """The command whose output directory ``path`` is (None: not a depthprune output)."""
    for name in dict.fromkeys(DIRECTORY_RECORDS.values()):
        owner = record_owner(read_record(path / name), name)
        if owner is not None:
            return owner
    return None


def output_marker(command: str, files: Iterable[str] = ()) -> dict:
    """The ``"output"`` entry of a record: which command wrote it and, for file outputs, its files."""
    marker = {"command": command, "depthprune": __version__}
    files = list(files)
    if files:
        marker["files"] = files
    return marker


# --------------------------------------------------------------------------------------------- declared outputs


def _absolute(path) -> Path:
    """``path`` made absolute with ``..`` folded away (``os.path.abspath``; symlinks are left as they are)."""
    return Path(os.path.abspath(Path(path).expanduser()))


@dataclass
class OutputSpec:
    """One output of a command, declared before any work.

    ``kind`` is ``directory`` (``path`` is a folder whose ``record`` file marks it) or ``files`` (``files`` are
    written side by side; ``record`` is the one among them that marks them all as this command's).
    """

    command: str
    path: Path
    kind: str = "directory"
    files: tuple[Path, ...] = ()
    overwrite: bool = False
    flag: str = "--out"
    record: Path = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.path = _absolute(self.path)
        self.files = tuple(_absolute(f) for f in self.files)
        if self.record is None:
            self.record = (self.path / DIRECTORY_RECORDS.get(self.command, "depthprune.json")
                           if self.kind == "directory" else (self.files[0] if self.files else self.path))
        self.record = _absolute(self.record)

    @property
    def targets(self) -> list[Path]:
        return [self.path] if self.kind == "directory" else list(self.files)

    @property
    def what(self) -> str:
        return COMMAND_WORDS.get(self.command, f"`depthprune {self.command}` output")


def check_output(spec: OutputSpec, inputs: Iterable[object]) -> None:
    """Everything about an output that can be known before any work; raises one sentence (see the module doc)."""
    inputs = list(inputs)
    for target in spec.targets:
        check_not_input(target, inputs, spec.flag)
    if spec.kind == "directory":
        _check_directory(spec)
    else:
        _check_files(spec)
    for target in spec.targets:
        prepare_parent(target)
        remember(target)


def _check_directory(spec: OutputSpec) -> None:
    out = spec.path
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise DepthpruneError(f"output path {out} exists and is not a directory; choose another {spec.flag}")
    try:
        empty = not any(out.iterdir())
    except OSError as exc:
        raise DepthpruneError(f"cannot read output directory {out}: {exc.strerror}") from None
    owner = None if empty else directory_owner(out)
    if not empty and owner != spec.command:
        what = f"a {COMMAND_WORDS[owner]}" if owner in COMMAND_WORDS else "not a previous depthprune output"
        raise DepthpruneError(f"output directory {out} already exists and is {what}; choose another {spec.flag} "
                              f"(--overwrite replaces only an earlier {spec.what} or an empty directory)")
    if not spec.overwrite:
        raise DepthpruneError(f"output directory {out} already exists (an earlier {spec.what}"
                              f"{'' if owner else ', empty'}); pass --overwrite to replace it, or choose another "
                              f"{spec.flag}")


def _check_files(spec: OutputSpec) -> None:
    existing = [f for f in spec.files if f.exists() or f.is_symlink()]
    if not existing:
        return
    for f in existing:
        if f.is_dir() and not f.is_symlink():
            raise DepthpruneError(f"output file {f} is an existing directory; choose another {spec.flag}")
    data = read_record(spec.record)
    owner = record_owner(data, spec.record.name)
    listed = set(((data or {}).get("output") or {}).get("files") or [])
    for f in existing:
        ours = owner == spec.command and (f == spec.record or not listed or f.name in listed)
        if not ours:
            raise DepthpruneError(f"output file {f} already exists and is not an earlier {spec.what} "
                                  f"({spec.record.name} does not record it); choose another {spec.flag} "
                                  "(--overwrite replaces only this command's own earlier output)")
    if not spec.overwrite:
        raise DepthpruneError(f"output file {existing[0]} already exists (an earlier {spec.what}); pass --overwrite "
                              f"to replace it, or choose another {spec.flag}")


# --------------------------------------------------------------------------------------------- parents, stale files


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
        probe = tempfile.mkdtemp(prefix=f".{out.name}.probe-{os.getpid()}-", dir=parent)
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
    """Remove the temporaries of killed runs beside ``out`` (see the module doc); a log line for each."""
    removed = []
    try:
        candidates = list(out.parent.glob(f".{out.name}.*"))
    except OSError:
        return removed
    with_pid = re.compile(rf"^\.{re.escape(out.name)}\.(?:tmp|old|probe)-(\d+)-")
    legacy = re.compile(rf"^\.{re.escape(out.name)}\.[A-Za-z0-9_]+\.tmp$")
    for path in candidates:
        try:
            mtime = os.lstat(path).st_mtime
        except OSError:
            continue
        match = with_pid.match(path.name)
        if match:
            pid = int(match.group(1))
            if pid == os.getpid() or mtime >= RUN_STARTED or _pid_alive(pid):
                continue
        elif not (legacy.match(path.name) and mtime < time.time() - LEGACY_STALE_AGE_S):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
        log.warning("removed %s, a temporary output left by an interrupted run", path)
        removed.append(path)
    return removed


# --------------------------------------------------------------------------------------------- commit


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


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _normal_permissions(path: Path) -> None:
    """mkdtemp/mkstemp create private (0700/0600) entries; give the result the usual umask-based modes."""
    umask = _umask()
    if path.is_dir():
        os.chmod(path, 0o777 & ~umask)
        for sub in path.rglob("*"):
            os.chmod(sub, (0o777 if sub.is_dir() else 0o666) & ~umask)
    else:
        os.chmod(path, 0o666 & ~umask)


def commit_all(moves: list[tuple[Path, Path]], *, overwrite: bool) -> None:
    """Move each staged ``tmp`` to its ``out``, all or nothing, never over something that changed meanwhile.

    An existing ``out`` (only with ``overwrite``, checked at planning time) is first moved aside to
    ``.NAME.old-PID-*``; if any move fails every earlier one is undone.
    """
    done: list[tuple[Path, Path, Path | None]] = []  # (tmp, out, old)
    parents = sorted({out.parent for _, out in moves}, key=str)
    with contextlib.ExitStack() as stack:
        for parent in parents:
            stack.enter_context(parent_lock(parent))
        try:
            for tmp, out in moves:
                expected, now = first_seen(out), identity(out)
                if now != expected or (now is not None and not overwrite):
                    raise appeared_meanwhile(out)
                old = None
                if now is not None:
                    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent)) / out.name
                    os.rename(out, old)
                try:
                    _rename_noreplace(tmp, out)
                except BaseException:
                    if old is not None:
                        os.rename(old, out)
                        shutil.rmtree(old.parent, ignore_errors=True)
                    raise
                done.append((tmp, out, old))
        except BaseException:
            for tmp, out, old in reversed(done):
                with contextlib.suppress(OSError):
                    os.rename(out, tmp)
                    if old is not None:
                        os.rename(old, out)
            raise
    for _, out, old in done:
        if old is not None:
            shutil.rmtree(old.parent, ignore_errors=True)
        _FIRST_SEEN[str(resolved(out))] = identity(out)


def _rename_noreplace(tmp: Path, out: Path) -> None:
    try:
        if tmp.is_dir():
            os.rename(tmp, out)  # under the lock and out is absent; an empty dir appearing makes rename fail
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


# --------------------------------------------------------------------------------------------- transactions


class Staging:
    """Where a transaction's files are written before they are committed."""

    def __init__(self, spec: OutputSpec, root: Path):
        self.spec = spec
        self.root = root  # a directory output: its staged copy; a files output: a folder holding staged files

    def path(self, target: Path | str) -> Path:
        """The staged location of ``target``: a path inside a directory output (relative, or absolute under
        ``spec.path``), or one of a files output's declared files."""
        target = Path(target)
        if self.spec.kind == "directory":
            if target.is_absolute():
                target = target.relative_to(self.root if target.is_relative_to(self.root) else self.spec.path)
            staged = self.root / target
            staged.parent.mkdir(parents=True, exist_ok=True)
            return staged
        if target not in self.spec.files:
            raise ValueError(f"{target} is not a declared file of this output")  # a programming error
        return self.root / f"{self.spec.files.index(target)}-{target.name}"

    def write_text(self, target: Path | str, text: str) -> Path:
        path = self.path(target)
        path.write_text(text, encoding="utf-8")
        return path

    def write_json(self, target: Path | str, data: dict) -> Path:
        return self.write_text(target, json.dumps(data, indent=2) + "\n")

    def write_record(self, data: dict) -> Path:
        """Write the output's record with the marker that makes it this command's own output."""
        files = [f.name for f in self.spec.files] if self.spec.kind == "files" else []
        return self.write_json(self.spec.record, {**data, "output": output_marker(self.spec.command, files)})

    @property
    def location(self) -> Path:
        """For a directory output: its staged root (where formats write their files)."""
        return self.root


@contextlib.contextmanager
def transaction(spec: OutputSpec, inputs: Iterable[object] = ()) -> Iterator[Staging]:
    """Write one declared output: yields a :class:`Staging`; on success everything is committed at once.

    ``spec`` must have been checked (:func:`check_output`) when the run was planned; it is checked again here
    (cheaply) so that a direct Python caller gets the same guarantees.
    """
    for target in spec.targets:
        if first_seen(target) is None and (target.exists() or target.is_symlink()):
            raise appeared_meanwhile(target)
    check_output(spec, inputs)
    anchor = spec.targets[0]
    root = Path(tempfile.mkdtemp(prefix=tmp_prefix(anchor), dir=anchor.parent))
    try:
        staging = Staging(spec, root)
        yield staging
        if spec.kind == "directory":
            _normal_permissions(root)
            commit_all([(root, spec.path)], overwrite=spec.overwrite)
        else:
            moves = []
            for f in spec.files:
                staged = staging.path(f)
                if not staged.exists():
                    continue
                _normal_permissions(staged)
                moves.append((staged, f))
            commit_all(moves, overwrite=spec.overwrite)
            shutil.rmtree(root, ignore_errors=True)
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


@contextlib.contextmanager
def cache_directory(target: Path) -> Iterator[Path | None]:
    """Fill a cache directory atomically: yields a temporary sibling (None when ``target`` already exists)."""
    target = Path(target)
    if target.exists():
        yield None
        return
    prepare_parent(target)
    root = Path(tempfile.mkdtemp(prefix=tmp_prefix(target), dir=target.parent))
    try:
        yield root
        _normal_permissions(root)
        try:
            os.rename(root, target)
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            shutil.rmtree(root, ignore_errors=True)  # a concurrent run filled it first: theirs is as good
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def weights_bytes(folder: Path) -> int:
    """Bytes of the weight files (``*.safetensors``, ``*.bin``, ``*.gguf``) in a folder."""
    return sum(p.stat().st_size for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf"))


__all__ = ["DIRECTORY_RECORDS", "OutputSpec", "Staging", "cache_directory", "check_not_input", "check_output",
           "commit_all", "directory_owner", "forget_all", "local_inputs", "output_marker", "prepare_parent",
           "read_record", "record_owner", "remember", "remove_stale_siblings", "transaction", "weights_bytes"]
