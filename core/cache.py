"""The on-disk artifact store shared by the app and the CLI.

Artifacts are single safetensors files (no pickle anywhere): tensors plus string
metadata. Every file carries a SHA-256 of its tensors and one of its metadata (which
holds results such as a model's metrics), both checked on load, and is written to a
temporary file and renamed into place, so a killed process never leaves a half
artifact under the final name.

`cached` is the one way an artifact is made: under the artifact's cross-process file lock
it loads the file if it is there and sound (a damaged one is removed), or computes, saves
and returns it. The app's jobs, the CLI and any other process sharing the folder therefore
compute each artifact once.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, TypeVar

import torch
from filelock import FileLock, Timeout
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from .errors import ArtifactError, ConfigError
from .progress import Progress, ProgressCallback, listening, report

_CHECKSUM_KEY = "poisonlab.sha256"
_META_KEY = "poisonlab.meta"
_META_CHECKSUM_KEY = "poisonlab.meta.sha256"


def cache_dir() -> Path:
    """`POISONLAB_CACHE` if set, else `cache/` at the top of the project."""
    configured = os.environ.get("POISONLAB_CACHE")
    path = Path(configured) if configured else Path(__file__).resolve().parent.parent / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def canonical_json(value: Any) -> str:
    """A stable text form of configs (dataclasses, tuples, dicts) for hashing and display."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, float) and v.is_integer():
            return v  # json keeps 1.0 distinct from 1, which is what we want
        return v

    return json.dumps(plain(value), sort_keys=True, separators=(",", ":"))


def config_hash(*parts: Any, length: int = 16) -> str:
    """Short hex digest naming the artifact computed from `parts`."""
    return hashlib.sha256(canonical_json(list(parts)).encode()).hexdigest()[:length]


def tensors_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy() if tensor.numel() else b"")
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_artifact(path: Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Store tensors and JSON-able metadata atomically, with checksums of both."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    meta_text = json.dumps(meta, sort_keys=True)
    header = {
        _META_KEY: meta_text,
        _META_CHECKSUM_KEY: hashlib.sha256(meta_text.encode()).hexdigest(),
        _CHECKSUM_KEY: tensors_checksum(tensors),
    }
    atomic_write_bytes(Path(path), save_safetensors_bytes(tensors, metadata=header))


def load_artifact(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read an artifact written by `save_artifact`; ArtifactError if damaged, FileNotFoundError if absent.

    The verified checksum is returned in the metadata as `checksum`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(path)
    try:
        # One read through one open file: safetensors' safe_open maps the tensors by opening the
        # path a second time, so a rename in between (another process storing a new version)
        # would pair one version's header with the next one's tensors.
        data = path.read_bytes()
        header = _header(data[:8], memoryview(data)[8:])
        tensors = load_safetensors_bytes(data)
        meta_text = header[_META_KEY]
        meta_ok = hashlib.sha256(meta_text.encode()).hexdigest() == header[_META_CHECKSUM_KEY]
        meta = json.loads(meta_text)
        expected = header[_CHECKSUM_KEY]
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ArtifactError(f"cache file {path} is unreadable ({exc}); it will be rebuilt") from exc
    if not meta_ok or tensors_checksum(tensors) != expected:
        raise ArtifactError(f"cache file {path} fails its checksum; it will be rebuilt")
    return tensors, {**meta, "checksum": expected}


DAMAGED: "collections.deque[Tuple[float, str]]" = collections.deque(maxlen=100)
"""(time, file name) of every damaged artifact this process removed, newest last, for the app to report."""


def discard(path: Path) -> None:
    """Remove a damaged or partial artifact so that it is recomputed, and record that it happened."""
    path = Path(path)
    try:
        path.unlink()
    except FileNotFoundError:
        return
    DAMAGED.append((time.time(), path.name))
    sys.stderr.write(f"[poisonlab] {path.name} in the cache was damaged or incomplete; removed, it will be recomputed\n")


@dataclasses.dataclass(frozen=True)
class ArtifactInfo:
    """One file in the cache, described from its header only (no tensors are read)."""

    name: str
    kind: str  # e.g. model-thesis_net, heatmaps-05-composite, adv-cw-l2; "partial write" for a temp file
    size: int
    modified: float
    parameters: str  # the artifact's own metadata in short, or why it cannot be read
    computed_on: str = ""  # the device it was computed on (core.device), "" where not recorded

    @property
    def complete(self) -> bool:
        return self.kind != "partial write"


_HIDDEN_META = ("history", "iterations", "checksum")


def artifact_kind(name: str) -> str:
    """The artifact's kind is its file name without the trailing config hash."""
    if name.startswith(".") and name.endswith(".tmp"):
        return "partial write"
    stem = name[: -len(".safetensors")] if name.endswith(".safetensors") else name
    head, _, tail = stem.rpartition("-")
    return head if head and all(c in "0123456789abcdef" for c in tail) else stem


def _header(length: bytes, rest) -> Dict[str, str]:
    """The `__metadata__` of a safetensors file, given its first 8 bytes and what follows."""
    if len(length) != 8:
        raise ValueError("shorter than a safetensors header")
    size = int.from_bytes(length, "little")
    if size > len(rest) or size > 100_000_000:
        raise ValueError("header length beyond the end of the file")
    return json.loads(bytes(rest[:size])).get("__metadata__") or {}


def artifact_meta(path: Path) -> Dict[str, Any]:
    """An artifact's metadata from its header alone (checked against its checksum; tensors unread)."""
    try:
        with open(path, "rb") as handle:
            length = handle.read(8)
            size = int.from_bytes(length, "little") if len(length) == 8 else 0
            header = _header(length, handle.read(min(size, 100_000_000)))
        meta_text = header[_META_KEY]
        if hashlib.sha256(meta_text.encode()).hexdigest() != header[_META_CHECKSUM_KEY]:
            raise ValueError("metadata checksum mismatch")
        return json.loads(meta_text)
    except FileNotFoundError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"cache file {path} has an unreadable header ({type(exc).__name__}: {exc})") from exc


def _describe(path: Path) -> Tuple[str, str]:
    """The artifact's metadata in short, and the device it was computed on."""
    try:
        meta = artifact_meta(path)
    except (ArtifactError, FileNotFoundError) as exc:
        return f"unreadable header ({type(exc.__cause__ or exc).__name__})", ""
    computed_on = meta.pop("computed_on", "") if isinstance(meta, dict) else ""

    def shown(value: Any) -> Any:  # per-epoch and per-iteration logs are too long for a listing
        if isinstance(value, dict):
            return {k: shown(v) for k, v in value.items() if k not in _HIDDEN_META}
        return value

    text = json.dumps(shown(meta), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return (text if len(text) <= 400 else text[:399] + "…"), str(computed_on)


def list_artifacts(directory: Path | None = None) -> list[ArtifactInfo]:
    """Every artifact and every leftover temporary file in the cache, newest first."""
    directory = Path(directory) if directory is not None else cache_dir()
    rows = []
    for path in directory.iterdir():
        if not path.is_file() or path.name == ".gitkeep":
            continue
        if not (path.suffix == ".safetensors" or path.name.endswith(".tmp")):
            continue
        try:
            stat = path.stat()
        except FileNotFoundError:  # renamed or deleted by another process meanwhile
            continue
        kind = artifact_kind(path.name)
        parameters, computed_on = ("left by a process that stopped while writing", "") if kind == "partial write" else _describe(path)
        rows.append(ArtifactInfo(path.name, kind, stat.st_size, stat.st_mtime, parameters, computed_on))
    return sorted(rows, key=lambda row: row.modified, reverse=True)


def delete_artifacts(names: list[str], directory: Path | None = None) -> int:
    """Delete cache files by name (never a path: a name with a separator is refused); returns how many went."""
    directory = Path(directory) if directory is not None else cache_dir()
    known = {row.name for row in list_artifacts(directory)}
    for name in names:  # all checked before any is deleted
        if name not in known or Path(name).name != name:
            raise ConfigError(f"{name!r} is not a file in the cache {directory}")
    deleted = 0
    for name in names:
        try:
            (directory / name).unlink()
            deleted += 1
        except FileNotFoundError:
            pass
    return deleted


def artifact_lock(key: str) -> FileLock:
    """The inter-process lock of the computation of `key` (a file in `lock_dir()`).

    One lock object per file in this process, re-entrant in the thread that holds it, so a
    job and the core function it calls can both lock the same artifact.
    """
    return FileLock(_lock_file(key), is_singleton=True)


def lock_dir() -> Path:
    """Where the artifact locks are: beside the cache folder (`.cache-locks` for `cache/`), so that the
    cache itself holds nothing but artifacts; inside it where its parent cannot be written."""
    directory = cache_dir()
    beside = directory.parent / f".{directory.name}-locks"
    try:
        beside.mkdir(exist_ok=True)
        return beside
    except OSError:
        inside = directory / ".locks"
        inside.mkdir(exist_ok=True)
        return inside


def _lock_file(key: str) -> Path:
    return lock_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.lock"


def _progress_file(key: str) -> Path:
    return _lock_file(key).with_suffix(".progress")


class _ProgressFile:
    """The latest progress of a computation, written beside its lock (at most twice a second) so that
    other processes can show it."""

    def __init__(self, key: str) -> None:
        self.path = _progress_file(key)
        self.started = time.time()
        self.written = 0.0

    def __call__(self, event: Progress) -> None:
        now = time.time()
        if now - self.written < 0.5 or event.message == WAITING:
            return
        self.written = now
        state = {"key": self.path.name, "pid": os.getpid(), "started": self.started, "updated": now, "task": event.task,
                 "done": event.done, "total": event.total, "message": event.message}
        try:
            atomic_write_bytes(self.path, json.dumps(state).encode())
        except OSError:
            pass

    def remove(self) -> None:
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


@dataclasses.dataclass(frozen=True)
class Computing:
    """A computation that holds an artifact's lock: its process, when it started and its latest
    progress (None before its first report)."""

    pid: Optional[int]
    started: Optional[float]
    progress: Optional[Progress]


def progress_elsewhere(key: str) -> Optional[Computing]:
    """The computation of `key` while one holds its lock (in any process), else None."""
    if not locked_elsewhere(key):
        return None
    try:
        state = json.loads(_progress_file(key).read_text())
        progress = Progress(str(state["task"]), int(state["done"]), int(state["total"]), str(state["message"]))
        return Computing(int(state["pid"]), float(state["started"]), progress)
    except (OSError, ValueError, KeyError, TypeError):
        return Computing(None, None, None)


def locked_elsewhere(key: str) -> bool:
    """True while a computation holds the lock of `key`, in any process (this one included)."""
    lock = FileLock(_lock_file(key))  # its own file descriptor, so a holder in this process counts too
    try:
        lock.acquire(blocking=False)
    except Timeout:
        return True
    lock.release()
    return False


WAITING = "waiting: another process is computing this"
_UNREADABLE = (ArtifactError, KeyError, TypeError, ValueError, RuntimeError)
"""A damaged file, or one written by another version that `decode` cannot read."""

T = TypeVar("T")
Encoded = Tuple[Mapping[str, torch.Tensor], Mapping[str, Any]]


def cached(
    path: Path,
    compute: Callable[[], T],
    encode: Callable[[T], Encoded],
    decode: Callable[[Dict[str, torch.Tensor], Dict[str, Any]], T],
    use_cache: bool = True,
    progress: Optional[ProgressCallback] = None,
    measure: Optional[Tuple[str, float]] = None,
) -> T:
    """`decode` of the artifact at `path`, or `compute()` stored there through `encode`.

    Computing happens under the artifact's lock, so a second process asking for the same
    artifact waits (reporting WAITING every second) and then loads what the first one stored.
    A file that fails its checksum or that `decode` cannot read is removed and recomputed.
    With `use_cache=False` nothing is read, written or locked. `measure` (step, units) records the
    computation's duration on this CPU (core.durations), from which pages estimate the next one.
    """
    if not use_cache:
        return compute()
    path = Path(path)
    try:  # a finished artifact needs no lock: it is only ever replaced whole, by a rename
        return decode(*load_artifact(path))
    except FileNotFoundError:
        pass
    except _UNREADABLE:
        pass  # removed under the lock below, where no other process can be storing it
    lock = artifact_lock(path.name)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        while True:  # reported every second, so that a job's cancel (raised from its progress) can end the wait
            report(progress, path.name, 0, 0, WAITING)
            try:
                lock.acquire(timeout=-1 if progress is None else 1)
                break
            except Timeout:
                continue
    try:
        found = load_cached(path, decode)
        if found is not None:
            return found
        shown = _ProgressFile(path.name)
        try:
            with listening(shown):
                if measure is None:
                    result = compute()
                else:
                    from .durations import measured

                    with measured(*measure):
                        result = compute()
        finally:
            shown.remove()
        tensors, meta = encode(result)
        from .device import describe

        save_artifact(path, tensors, {**meta, "computed_on": describe()})  # the device is no part of the name: see core.device
        return result
    finally:
        lock.release()


def meta_only(tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> Dict[str, Any]:
    """The decoder of an artifact that is all metadata (a table): its fields without the checksum and the
    device it was computed on (the Cache view's; the table is the same on every device)."""
    return {k: v for k, v in meta.items() if k not in ("checksum", "computed_on")}


def load_cached(path: Path, decode: Callable[[Dict[str, torch.Tensor], Dict[str, Any]], T]) -> Optional[T]:
    """`decode` of the artifact at `path` if it is there and sound, else None; computes nothing
    and takes no lock (a damaged file is removed, as `cached` would)."""
    path = Path(path)
    try:
        return decode(*load_artifact(path))
    except FileNotFoundError:
        return None
    except _UNREADABLE:
        discard(path)
        return None
