"""Fetch the official GTSRB release for users who are online.

Three archives (training images, test images, test labels), each verified against its
published MD5 before it is unpacked; files are downloaded to a `.part` name and renamed
only once complete, and no archive member may be written outside the destination.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .errors import DataError
from .progress import ProgressCallback, report

BASE_URL = "https://sid.erda.dk/public/archives/daaeac0d7ce1152aea9b61d9f1e19370/"


@dataclass(frozen=True)
class Archive:
    name: str
    md5: str


OFFICIAL_ARCHIVES = (
    Archive("GTSRB_Final_Training_Images.zip", "f33fd80ac59bff73c82d25ab499e03a3"),
    Archive("GTSRB_Final_Test_Images.zip", "c7e4e6327067d32654124b0fe9e82185"),
    Archive("GTSRB_Final_Test_GT.zip", "fe31e9c9270bbcd7b84b7f21a9d9d9e5"),
)
_CHUNK = 1 << 20


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, target: Path, md5: str, progress: Optional[ProgressCallback] = None) -> Path:
    """Download `url` to `target` unless a file with the right checksum is already there."""
    if target.is_file() and _md5(target) == md5:
        return target
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            for block in iter(lambda: response.read(_CHUNK), b""):
                out.write(block)
                done += len(block)
                report(progress, f"download {target.name}", done, total, f"{done / 1e6:.1f} MB")
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise DataError(f"downloading {url} failed: {exc}") from exc
    actual = _md5(partial)
    if actual != md5:
        partial.unlink(missing_ok=True)
        raise DataError(f"{url} arrived damaged: MD5 {actual}, expected {md5}; try again")
    os.replace(partial, target)
    return target


def safe_extract(archive: Path, dest: Path) -> None:
    """Unpack a zip, refusing members that would land outside `dest`."""
    dest = dest.resolve()
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.infolist():
                path = (dest / member.filename).resolve()
                if path != dest and dest not in path.parents:
                    raise DataError(f"{archive} holds {member.filename!r}, which points outside {dest}; refusing to unpack it")
            bundle.extractall(dest)
    except zipfile.BadZipFile as exc:
        raise DataError(f"{archive} is not a valid zip archive: {exc}") from exc


def download_official(
    dest: os.PathLike | str,
    base_url: str = BASE_URL,
    archives: Sequence[Archive] = OFFICIAL_ARCHIVES,
    progress: Optional[ProgressCallback] = None,
) -> Path:
    """Download, verify and unpack the release into `dest`; returns the folder to use as GTSRB_DIR."""
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    for archive in archives:
        path = fetch(base_url + archive.name, dest / archive.name, archive.md5, progress)
        safe_extract(path, dest)
    root = dest / "GTSRB"
    labels = dest / "GT-final_test.csv"
    if labels.is_file():
        images = root / "Final_Test" / "Images"
        images.mkdir(parents=True, exist_ok=True)
        shutil.move(str(labels), images / labels.name)
    return root
