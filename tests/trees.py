"""Generators of miniature GTSRB trees in both layouts core reads.

Every image is painted so that its decoded pixels reveal where it came from (class, track,
frame), which lets the tests check labels, ordering, cropping and the track split from the
loaded tensors alone.
"""

from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from core.data import NUM_CLASSES

SPLIT_FOLDERS = ("Training", "Validation", "Testing")
Color = Tuple[int, int, int]


def solid_color(split: int, label: int, index: int) -> Color:
    return (label * 5, 40 + split * 60 + index, 200 - index)


def write_image(path: Path, color: Color, size: Tuple[int, int] = (32, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, tuple(color)).save(path)


def pixels(color: Color) -> np.ndarray:
    """A (3, 32, 32) uint8 array of one colour, channel-first like core's tensors."""
    return np.broadcast_to(np.asarray(color, dtype=np.uint8)[:, None, None], (3, 32, 32))


def make_class_folder_tree(root: Path, per_class: int = 2, suffix: str = ".png") -> Dict[str, List[Tuple[int, Color]]]:
    """Training/Validation/Testing with all 43 class folders and `per_class` solid images in each.

    Returns, per split folder, the (label, colour) of every image in load order.
    """
    expected: Dict[str, List[Tuple[int, Color]]] = {}
    for s, split in enumerate(SPLIT_FOLDERS):
        rows = []
        for label in range(NUM_CLASSES):
            for index in range(per_class):
                color = solid_color(s, label, index)
                write_image(root / split / f"{label:05d}" / f"{index}{suffix}", color)
                rows.append((label, color))
        expected[split] = rows
    return expected


# --- the official release ---------------------------------------------------------------

BORDER: Color = (255, 0, 255)  # no ROI colour below has red 255, so any bleed shows
CSV_HEADER = ["Filename", "Width", "Height", "Roi.X1", "Roi.Y1", "Roi.X2", "Roi.Y2", "ClassId"]


def track_color(label: int, track: int, frame: int) -> Color:
    return (label * 5, 30 + track * 40, 60 + frame * 50)


def final_test_color(index: int, label: int) -> Color:
    return (label * 5, 250, 10 + index)


def gradient() -> np.ndarray:
    """A 32x32x3 pattern in which every pixel differs, to check a crop pixel for pixel."""
    y, x = np.mgrid[0:32, 0:32]
    return np.stack([x * 7, y * 7, (x + y) * 3 + 7], axis=-1).astype(np.uint8)


def _frame(size: Tuple[int, int], roi: Tuple[int, int, int, int], content) -> Image.Image:
    """An image of `size` with `content` (a colour or an array) filling the inclusive `roi`."""
    image = Image.new("RGB", size, BORDER)
    x1, y1, x2, y2 = roi
    if isinstance(content, np.ndarray):
        image.paste(Image.fromarray(content), (x1, y1))
    else:
        image.paste(tuple(content), (x1, y1, x2 + 1, y2 + 1))
    return image


# Alternating geometries: a 32x32 ROI (crop only) and larger ROIs in differently shaped
# images (crop, then resize).
_GEOMETRIES = (
    ((40, 44), (4, 6, 35, 37)),
    ((44, 40), (3, 2, 39, 36)),
    ((40, 44), (5, 5, 34, 38)),
)


@dataclass
class OfficialTree:
    base: Path
    """The GTSRB/ folder holding Final_Training/ and Final_Test/."""
    test_labels: List[int] = field(default_factory=list)
    gradient_test_index: int = 0


def make_official_tree(root: Path, tracks: int = 3, frames: int = 2, n_test: int = 60) -> OfficialTree:
    """GTSRB/Final_Training/Images/000NN/TTTTT_IIIII.ppm with GT-000NN.csv for all 43 classes,
    and GTSRB/Final_Test/Images/NNNNN.ppm with GT-final_test.csv (labels in shuffled order).

    Test image 0 holds a per-pixel gradient in an exactly 32x32 ROI.
    """
    base = root / "GTSRB"
    tree = OfficialTree(base)
    for label in range(NUM_CLASSES):
        folder = base / "Final_Training" / "Images" / f"{label:05d}"
        folder.mkdir(parents=True)
        rows = []
        for track in range(tracks):
            for frame in range(frames):
                size, roi = _GEOMETRIES[(track + frame + label) % len(_GEOMETRIES)]
                name = f"{track:05d}_{frame:05d}.ppm"
                _frame(size, roi, track_color(label, track, frame)).save(folder / name)
                rows.append([name, *size, *roi, label])
        _write_csv(folder / f"GT-{label:05d}.csv", rows)

    images = base / "Final_Test" / "Images"
    images.mkdir(parents=True)
    rows = []
    for index in range(n_test):
        label = (index * 17 + 5) % NUM_CLASSES
        size, roi = _GEOMETRIES[index % len(_GEOMETRIES)]
        content = gradient() if index == tree.gradient_test_index else final_test_color(index, label)
        if index == tree.gradient_test_index:
            size, roi = _GEOMETRIES[0]
        name = f"{index:05d}.ppm"
        _frame(size, roi, content).save(images / name)
        rows.append([name, *size, *roi, label])
        tree.test_labels.append(label)
    _write_csv(images / "GT-final_test.csv", rows)
    # The release ships an unlabelled copy of the annotations next to the test images.
    _write_csv(images / "GT-final_test.test.csv", [r[:-1] for r in rows], header=CSV_HEADER[:-1])
    return tree


def _write_csv(path: Path, rows, header=CSV_HEADER) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(header)
        writer.writerows(rows)


def zip_like_release(tree: OfficialTree, out: Path) -> Dict[str, Path]:
    """The three archives of the official release, with their member layout:

    GTSRB_Final_Training_Images.zip: GTSRB/Final_Training/Images/...
    GTSRB_Final_Test_Images.zip:     GTSRB/Final_Test/Images/*.ppm (+ the unlabelled csv)
    GTSRB_Final_Test_GT.zip:         GT-final_test.csv at its root
    """
    out.mkdir(parents=True, exist_ok=True)
    parent = tree.base.parent
    test_images = tree.base / "Final_Test" / "Images"
    archives = {
        "GTSRB_Final_Training_Images.zip": sorted((tree.base / "Final_Training").rglob("*")),
        "GTSRB_Final_Test_Images.zip": sorted(p for p in test_images.iterdir() if p.name != "GT-final_test.csv"),
    }
    paths = {}
    for name, files in archives.items():
        paths[name] = out / name
        with zipfile.ZipFile(paths[name], "w") as bundle:
            for path in files:
                if path.is_file():
                    bundle.write(path, path.relative_to(parent).as_posix())
    paths["GTSRB_Final_Test_GT.zip"] = out / "GTSRB_Final_Test_GT.zip"
    with zipfile.ZipFile(paths["GTSRB_Final_Test_GT.zip"], "w") as bundle:
        bundle.write(test_images / "GT-final_test.csv", "GT-final_test.csv")
    return paths
