"""GTSRB in, as uint8 tensors (N, 3, 32, 32), from either of the two layouts it is found in.

* class folders (the thesis's split): ``Training|Validation|Testing/000NN/*.{jpeg,jpg,png,ppm}``;
* the official release: ``Final_Training/Images/000NN/*.ppm`` with ``GT-000NN.csv`` and
  ``Final_Test/Images/*.ppm`` with ``GT-final_test.csv``; images are cropped to their
  region of interest and resized to 32x32. The release has no validation split, so whole
  tracks (the ~30 frames of one physical sign) are held out, keeping the splits disjoint
  in signs as the thesis's split is.

Decoding the tree takes seconds, so the decoded data set is cached as one checksummed
file named by a fingerprint of the file listing; a second load only reads that file.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .cache import cache_dir, cached, load_cached, tensors_checksum
from .errors import DataError
from .progress import ProgressCallback, report

NUM_CLASSES = 43
DECODE_STEP = "decode gtsrb"  # its duration is measured per CPU (core.durations)
IMAGE_SIZE = 32
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".ppm")
ENV_VAR = "GTSRB_DIR"
_FORMAT_VERSION = 1
_CLASS_FOLDERS = {"train": "Training", "val": "Validation", "test": "Testing"}
_VALIDATION_TRACK_SHARE = 0.1

CLASS_NAMES: Tuple[str, ...] = (
    "Speed limit (20km/h)",
    "Speed limit (30km/h)",
    "Speed limit (50km/h)",
    "Speed limit (60km/h)",
    "Speed limit (70km/h)",
    "Speed limit (80km/h)",
    "End of speed limit (80km/h)",
    "Speed limit (100km/h)",
    "Speed limit (120km/h)",
    "No passing",
    "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection",
    "Priority road",
    "Yield",
    "Stop",
    "No vehicles",
    "Vehicles over 3.5 metric tons prohibited",
    "No entry",
    "General caution",
    "Dangerous curve to the left",
    "Dangerous curve to the right",
    "Double curve",
    "Bumpy road",
    "Slippery road",
    "Road narrows on the right",
    "Road work",
    "Traffic signals",
    "Pedestrians",
    "Children crossing",
    "Bicycles crossing",
    "Beware of ice/snow",
    "Wild animals crossing",
    "End of all speed and passing limits",
    "Turn right ahead",
    "Turn left ahead",
    "Ahead only",
    "Go straight or right",
    "Go straight or left",
    "Keep right",
    "Keep left",
    "Roundabout mandatory",
    "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
)

_HOW_TO_SET = (
    f"Set the environment variable {ENV_VAR} to the folder that holds GTSRB, either in class "
    "folders (Training/, Validation/, Testing/ with 00000 … 00042 inside) or as the official "
    "release (Final_Training/Images, Final_Test/Images); `python -m core download --dest DIR` "
    "fetches the official release."
)


@dataclass(frozen=True, eq=False)
class Split:
    """One split: images uint8 (N, 3, 32, 32) and labels int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def float_images(self) -> torch.Tensor:
        """Images as float32 in [0, 1], the convention inside core."""
        return self.images.float().div_(255.0)

    def class_counts(self) -> List[int]:
        return torch.bincount(self.labels, minlength=NUM_CLASSES).tolist()


@dataclass(frozen=True, eq=False)
class GTSRB:
    train: Split
    val: Split
    test: Split
    root: str
    layout: str
    content_id: str
    """Checksum of the decoded tensors: names the data in downstream cache keys."""

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)


@dataclass(frozen=True)
class _Entry:
    path: str
    label: int
    roi: Optional[Tuple[int, int, int, int]] = None  # x1, y1, x2, y2 inclusive
    size: int = 0
    mtime_ns: int = 0


def resolve_root(root: Optional[os.PathLike | str] = None) -> Path:
    """The GTSRB folder: `root` if given, else `$GTSRB_DIR`; a clear error if neither exists."""
    if root is None:
        configured = os.environ.get(ENV_VAR)
        if not configured:
            raise DataError(f"{ENV_VAR} is not set, so Poison Lab does not know where GTSRB is. {_HOW_TO_SET}")
        root = configured
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"GTSRB folder {path} does not exist or is not a folder. {_HOW_TO_SET}")
    return path.resolve()


class NotCached(LookupError):
    """Raised by `load_gtsrb(decode=False)` when only the slow decoding path could answer."""


def load_gtsrb(
    root: Optional[os.PathLike | str] = None,
    *,
    use_cache: bool = True,
    decode: bool = True,
    progress: Optional[ProgressCallback] = None,
) -> GTSRB:
    """Load all three splits, from the cache when the file listing is unchanged.

    With `decode=False` it raises NotCached instead of decoding, so a caller can move the
    slow path off its thread.
    """
    path = resolve_root(root)
    layout, entries = _list_entries(path)
    cache_file = _cache_file(path, layout, entries)

    def decode_tensors(tensors: Dict[str, torch.Tensor], meta: Dict[str, Any]) -> GTSRB:
        return _from_tensors(tensors, str(path), meta["layout"], meta["checksum"])

    if not decode:  # the quick answer or none: no decoding, no waiting for a process that decodes
        found = load_cached(cache_file, decode_tensors) if use_cache else None
        if found is None:
            raise NotCached(str(cache_file))
        return found

    def encode(data: GTSRB):
        tensors = {f"{s}_{part}": getattr(data.split(s), part) for s in SPLITS for part in ("images", "labels")}
        return tensors, {"layout": layout, "root": str(path), "format": _FORMAT_VERSION}

    def compute() -> GTSRB:
        tensors = _decode_all(entries, progress)
        return _from_tensors(tensors, str(path), layout, tensors_checksum(tensors))

    return cached(cache_file, compute, encode, decode_tensors, use_cache, progress, measure=(DECODE_STEP, 1))


def dataset_cache_path(root: Optional[os.PathLike | str] = None) -> Path:
    """Where the decoded data set of `root` is (or would be) cached."""
    path = resolve_root(root)
    return _cache_file(path, *_list_entries(path))


def _cache_file(root: Path, layout: str, entries: Dict[str, List[_Entry]]) -> Path:
    return cache_dir() / f"gtsrb-{_listing_fingerprint(root, layout, entries)}.safetensors"


def _listing_fingerprint(root: Path, layout: str, entries: Dict[str, List[_Entry]]) -> str:
    """Names the decoded cache: any added, removed, relabelled or rewritten file changes it."""
    digest = hashlib.sha256(f"{_FORMAT_VERSION}|{root}|{layout}".encode())
    for split in SPLITS:
        for e in entries[split]:
            digest.update(f"\n{split}|{e.path}|{e.label}|{e.roi}|{e.size}|{e.mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _from_tensors(tensors: Dict[str, torch.Tensor], root: str, layout: str, checksum: str) -> GTSRB:
    splits = {s: Split(tensors[f"{s}_images"], tensors[f"{s}_labels"]) for s in SPLITS}
    return GTSRB(**splits, root=root, layout=layout, content_id=checksum[:16])


def _list_entries(root: Path) -> Tuple[str, Dict[str, List[_Entry]]]:
    if (root / _CLASS_FOLDERS["train"]).is_dir():
        return "class-folders", _list_class_folders(root)
    for base in (root, root / "GTSRB"):
        if (base / "Final_Training").is_dir():
            return "official", _list_official(base)
    found = ", ".join(sorted(p.name for p in root.iterdir())[:10]) or "nothing"
    raise DataError(
        f"{root} holds neither GTSRB layout (found: {found}); expected Training/ or "
        f"Final_Training/ inside it. {_HOW_TO_SET}"
    )


def _class_id(folder: Path) -> int:
    name = folder.name
    if not (name.isdigit() and 0 <= int(name) < NUM_CLASSES):
        raise DataError(f"{folder} is not a GTSRB class folder (expected 00000 … 00042). {_HOW_TO_SET}")
    return int(name)


def _images_in(folder: Path, label: int) -> List[_Entry]:
    """The images of one class folder in natural order (2.jpeg before 10.jpeg), with size and mtime."""
    found = []
    with os.scandir(folder) as it:
        for item in it:
            if item.name.lower().endswith(IMAGE_SUFFIXES) and item.is_file():
                st = item.stat()
                stem = item.name.rsplit(".", 1)[0]
                found.append(((len(stem), stem), _Entry(item.path, label, None, st.st_size, st.st_mtime_ns)))
    if not found:
        raise DataError(f"class folder {folder} contains no images ({', '.join(IMAGE_SUFFIXES)}). {_HOW_TO_SET}")
    found.sort(key=lambda pair: pair[0])
    return [entry for _, entry in found]


def _list_class_folders(root: Path) -> Dict[str, List[_Entry]]:
    entries: Dict[str, List[_Entry]] = {}
    for split, name in _CLASS_FOLDERS.items():
        folder = root / name
        if not folder.is_dir():
            raise DataError(f"{folder} is missing: the class-folder layout needs Training/, Validation/ and Testing/. {_HOW_TO_SET}")
        class_dirs = sorted(p for p in folder.iterdir() if p.is_dir())
        if not class_dirs:
            raise DataError(f"{folder} has no class folders (00000 … 00042). {_HOW_TO_SET}")
        entries[split] = [e for d in class_dirs for e in _images_in(d, _class_id(d))]
    _require_all_classes(root / _CLASS_FOLDERS["train"], entries["train"])
    return entries


def _require_all_classes(folder: Path, entries: Sequence[_Entry]) -> None:
    missing = sorted(set(range(NUM_CLASSES)) - {e.label for e in entries})
    if missing:
        raise DataError(f"{folder} lacks the class folders {', '.join(f'{c:05d}' for c in missing)}; GTSRB has 43 classes. {_HOW_TO_SET}")


def _read_gt_csv(path: Path) -> List[Dict[str, str]]:
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle, delimiter=";"))
    except OSError as exc:
        raise DataError(f"cannot read annotation file {path}: {exc}") from exc
    needed = {"Filename", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"}
    if not rows or not needed <= set(rows[0]):
        raise DataError(f"annotation file {path} lacks the columns {sorted(needed)} or has no rows")
    return rows


def _entry_from_row(folder: Path, row: Dict[str, str], path_of: Path) -> _Entry:
    try:
        roi = tuple(int(row[k]) for k in ("Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2"))
        label = int(row["ClassId"])
    except ValueError as exc:
        raise DataError(f"annotation file {path_of} has a malformed row for {row.get('Filename')}: {exc}") from exc
    if not 0 <= label < NUM_CLASSES:
        raise DataError(f"annotation file {path_of} gives class {label} for {row['Filename']}; GTSRB has 0 … 42")
    image = folder / row["Filename"]
    try:
        st = image.stat()
    except OSError:
        raise DataError(f"{path_of} lists {row['Filename']}, but {image} does not exist") from None
    return _Entry(str(image), label, roi, st.st_size, st.st_mtime_ns)  # type: ignore[arg-type]


def _list_official(base: Path) -> Dict[str, List[_Entry]]:
    images_root = base / "Final_Training" / "Images"
    if not images_root.is_dir():
        raise DataError(f"{images_root} is missing from the official layout. {_HOW_TO_SET}")
    train: List[_Entry] = []
    val: List[_Entry] = []
    class_dirs = sorted(p for p in images_root.iterdir() if p.is_dir())
    for folder in class_dirs:
        label = _class_id(folder)
        gt = folder / f"GT-{label:05d}.csv"
        if not gt.is_file():
            raise DataError(f"{gt} is missing: each official class folder holds its annotation file")
        rows = _read_gt_csv(gt)
        if not rows:
            raise DataError(f"class folder {folder} contains no images")
        class_entries = [_entry_from_row(folder, row, gt) for row in rows]
        tracks = sorted({_track_of(e) for e in class_entries})
        n_held = max(1, round(_VALIDATION_TRACK_SHARE * len(tracks))) if len(tracks) > 1 else 0
        held = set(tracks[len(tracks) - n_held :])
        for entry in class_entries:
            (val if _track_of(entry) in held else train).append(entry)
    _require_all_classes(images_root, train)

    test_images = base / "Final_Test" / "Images"
    if not test_images.is_dir():
        raise DataError(f"{test_images} is missing from the official layout. {_HOW_TO_SET}")
    candidates = [test_images / "GT-final_test.csv", base / "Final_Test" / "GT-final_test.csv", base / "GT-final_test.csv"]
    gt_test = next((c for c in candidates if c.is_file()), None)
    if gt_test is None:
        raise DataError(
            f"GT-final_test.csv (test labels, from GTSRB_Final_Test_GT.zip) is missing; looked in "
            f"{', '.join(str(c.parent) for c in candidates)}"
        )
    test = [_entry_from_row(test_images, row, gt_test) for row in _read_gt_csv(gt_test)]
    return {"train": train, "val": val, "test": test}


def _track_of(entry: _Entry) -> str:
    """Official file names are TTTTT_IIIII.ppm: track, then frame within the track."""
    return os.path.basename(entry.path).split("_")[0]


def decode_image(path: os.PathLike | str, roi: Optional[Tuple[int, int, int, int]] = None) -> np.ndarray:
    """One image as uint8 (32, 32, 3): cropped to `roi` (inclusive corners) and area-resized."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if roi is not None:
                x1, y1, x2, y2 = roi
                image = image.crop((x1, y1, x2 + 1, y2 + 1))
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}. Replace or remove the file.") from exc


UPLOAD_FORMATS = ("PNG", "JPEG")
_UPLOAD_MAX_PIXELS = 50_000_000


def decode_upload(content: bytes) -> np.ndarray:
    """A user's PNG or JPEG file of any size as uint8 (32, 32, 3), area-resized like the
    data set; anything else is refused with a message that says why."""
    import io

    if not isinstance(content, (bytes, bytearray)) or not content:
        raise DataError("the file is empty")
    try:
        with Image.open(io.BytesIO(content)) as image:
            if image.format not in UPLOAD_FORMATS:
                raise DataError(f"only PNG or JPEG images can be used, this file is {image.format or 'of an unknown format'}")
            if image.width * image.height > _UPLOAD_MAX_PIXELS:
                raise DataError(f"the image is {image.width}x{image.height} pixels; at most {_UPLOAD_MAX_PIXELS:,} pixels are accepted")
            image = image.convert("RGB")
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                image = image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
            return np.asarray(image, dtype=np.uint8)
    except UnidentifiedImageError as exc:
        raise DataError("this is not an image file; use a PNG or JPEG") from exc
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"the image cannot be read: {exc}") from exc


def _decode_chunk(items: Sequence[_Entry]) -> np.ndarray:
    images = np.empty((len(items), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i, entry in enumerate(items):
        try:
            images[i] = decode_image(entry.path, entry.roi)
        except DataError as exc:
            raise DataError(f"{exc} {ENV_VAR} must point to a complete, readable copy of GTSRB.") from exc
    return images


_DECODE_CHUNK = 500


def _decode_all(entries: Dict[str, List[_Entry]], progress: Optional[ProgressCallback]) -> Dict[str, torch.Tensor]:
    """Decode every image, in order, on one thread per core: Pillow releases the interpreter
    lock while it reads and decodes a file, so the threads overlap."""
    from concurrent.futures import ThreadPoolExecutor

    total = sum(len(v) for v in entries.values())
    done = 0
    tensors: Dict[str, torch.Tensor] = {}
    workers = max(1, min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        for split in SPLITS:
            items = entries[split]
            chunks = [items[start : start + _DECODE_CHUNK] for start in range(0, len(items), _DECODE_CHUNK)]
            parts = []
            for part in pool.map(_decode_chunk, chunks):
                parts.append(part)
                done += len(part)
                report(progress, "decode GTSRB", done, total, f"{split}: {sum(len(p) for p in parts)}/{len(items)} images")
            images = np.concatenate(parts) if parts else np.empty((0, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
            tensors[f"{split}_images"] = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
            tensors[f"{split}_labels"] = torch.tensor([e.label for e in items], dtype=torch.int64)
    return tensors
