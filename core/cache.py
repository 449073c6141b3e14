"""The on-disk artifact store shared by the app and the CLI.

Artifacts are single safetensors files (no pickle anywhere): tensors plus string
metadata. Every file carries a SHA-256 of its tensors and one of its metadata (which
holds results such as a model's metrics), both checked on load, and is written to a
temporary file and renamed into place, so a killed process never leaves a half
artifact under the final name.
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
from typing import Any, Dict, Mapping, Tuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from .errors import ArtifactError, ConfigError

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


def _describe(path: Path) -> str:
    try:
        meta = artifact_meta(path)
    except (ArtifactError, FileNotFoundError) as exc:
        return f"unreadable header ({type(exc.__cause__ or exc).__name__})"

    def shown(value: Any) -> Any:  # per-epoch and per-iteration logs are too long for a listing
        if isinstance(value, dict):
            return {k: shown(v) for k, v in value.items() if k not in _HIDDEN_META}
        return value

    text = json.dumps(shown(meta), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text if len(text) <= 400 else text[:399] + "…"


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
        parameters = "left by a process that stopped while writing" if kind == "partial write" else _describe(path)
        rows.append(ArtifactInfo(path.name, kind, stat.st_size, stat.st_mtime, parameters))
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
