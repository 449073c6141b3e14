"""The official GTSRB release: ROI crops, the track-wise validation split, test labels from
GT-final_test.csv, and downloading, verifying and unpacking the three archives."""

from __future__ import annotations

import hashlib
import zipfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from core.data import NUM_CLASSES, SPLITS, load_gtsrb
from core.download import Archive, download_official, safe_extract
from core.errors import DataError
from trees import BORDER, final_test_color, gradient, make_official_tree, pixels, track_color, zip_like_release

TRACKS, FRAMES = 3, 2


@pytest.fixture(autouse=True)
def _private_cache(tmp_cache):
    """Generated trees must never leave their decoded copies in the shared cache."""


@pytest.fixture
def official(tmp_path):
    return make_official_tree(tmp_path / "release", tracks=TRACKS, frames=FRAMES)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def uniform_color(image: torch.Tensor):
    """The colour of an image that is one colour throughout, else None."""
    flat = image.reshape(3, -1)
    if not bool((flat == flat[:, :1]).all()):
        return None
    return tuple(int(v) for v in flat[:, 0])


def identify_frames(split):
    """(label, track, frame) of every image, recovered from its colour."""
    lookup = {
        track_color(label, track, frame): (label, track, frame)
        for label in range(NUM_CLASSES) for track in range(TRACKS) for frame in range(FRAMES)
    }
    found = []
    for image, label in zip(split.images, split.labels.tolist()):
        color = uniform_color(image)
        assert color in lookup, f"image of class {label} is not a clean crop of its ROI: {color}"
        assert lookup[color][0] == label
        found.append(lookup[color])
    return found


def test_official_layout_loads(official):
    data = load_gtsrb(official.base)
    assert data.layout == "official"
    for split in SPLITS:
        assert data.split(split).images.dtype == torch.uint8
        assert data.split(split).images.shape[1:] == (3, 32, 32)
        assert data.split(split).labels.dtype == torch.int64


def test_training_images_are_their_roi_cropped_and_resized(official):
    data = load_gtsrb(official.base)
    train, val = identify_frames(data.train), identify_frames(data.val)
    every = {(label, track, frame) for label in range(NUM_CLASSES) for track in range(TRACKS) for frame in range(FRAMES)}
    assert sorted(train + val) == sorted(every), "each frame appears exactly once"
    assert not any(uniform_color(image) == BORDER for image in data.train.images)


def test_whole_tracks_are_held_out_for_validation(official):
    data = load_gtsrb(official.base)
    tracks = {"train": defaultdict(set), "val": defaultdict(set)}
    for split in ("train", "val"):
        for label, track, _ in identify_frames(data.split(split)):
            tracks[split][label].add(track)
    for label in range(NUM_CLASSES):
        assert tracks["val"][label], f"class {label} has several tracks but none held out"
        assert tracks["train"][label], f"class {label} kept no track for training"
        assert not tracks["train"][label] & tracks["val"][label], f"a track of class {label} is in both splits"
    assert data.val.class_counts() == [FRAMES * len(tracks["val"][c]) for c in range(NUM_CLASSES)]
    assert len(data.val) < len(data.train)


def test_a_single_track_class_stays_in_training(tmp_path):
    tree = make_official_tree(tmp_path / "release", tracks=1, frames=2)
    data = load_gtsrb(tree.base)
    assert len(data.val) == 0
    assert data.train.class_counts() == [2] * NUM_CLASSES


def test_test_labels_come_from_the_csv(official):
    data = load_gtsrb(official.base)
    assert data.test.labels.tolist() == official.test_labels
    assert len(set(official.test_labels)) > 10, "the labels are not in class order"
    for index, (image, label) in enumerate(zip(data.test.images, official.test_labels)):
        if index == official.gradient_test_index:
            continue
        assert np.array_equal(image.numpy(), pixels(final_test_color(index, label))), index


def test_a_32_pixel_roi_is_cropped_pixel_for_pixel(official):
    """The ROI corners are inclusive: a 32x32 ROI comes out unchanged, without the border."""
    data = load_gtsrb(official.base)
    image = data.test.images[official.gradient_test_index]
    assert np.array_equal(image.permute(1, 2, 0).numpy(), gradient())


def test_root_may_be_the_folder_above_gtsrb(official):
    below, above = load_gtsrb(official.base), load_gtsrb(official.base.parent)
    assert above.layout == "official"
    for split in SPLITS:
        assert torch.equal(below.split(split).images, above.split(split).images)
        assert torch.equal(below.split(split).labels, above.split(split).labels)


def test_missing_test_labels_are_explained(official):
    (official.base / "Final_Test" / "Images" / "GT-final_test.csv").unlink()
    with pytest.raises(DataError, match="GT-final_test.csv"):
        load_gtsrb(official.base)


def test_annotation_naming_a_missing_image(official):
    (official.base / "Final_Training" / "Images" / "00012" / "00001_00001.ppm").unlink()
    with pytest.raises(DataError, match="00001_00001.ppm"):
        load_gtsrb(official.base)


# --- download_official ---------------------------------------------------------------------


@pytest.fixture
def mirror(official, tmp_path):
    """The miniature zipped like the official release, and Archive entries with its MD5s."""
    folder = tmp_path / "mirror"
    paths = zip_like_release(official, folder)
    archives = [Archive(name, md5(path)) for name, path in paths.items()]
    return folder, archives


def base_url(folder: Path) -> str:
    return folder.resolve().as_uri() + "/"


def test_release_archives_have_the_official_structure(mirror):
    folder, _ = mirror
    with zipfile.ZipFile(folder / "GTSRB_Final_Training_Images.zip") as bundle:
        names = bundle.namelist()
        assert "GTSRB/Final_Training/Images/00000/GT-00000.csv" in names
        assert "GTSRB/Final_Training/Images/00042/00002_00001.ppm" in names
    with zipfile.ZipFile(folder / "GTSRB_Final_Test_Images.zip") as bundle:
        names = bundle.namelist()
        assert "GTSRB/Final_Test/Images/00000.ppm" in names
        assert not any(name.endswith("GT-final_test.csv") for name in names)
    with zipfile.ZipFile(folder / "GTSRB_Final_Test_GT.zip") as bundle:
        assert bundle.namelist() == ["GT-final_test.csv"]


def test_download_official_end_to_end(official, mirror, tmp_path):
    folder, archives = mirror
    dest = tmp_path / "download"
    events = []
    root = download_official(dest, base_url=base_url(folder), archives=archives, progress=events.append)
    assert root == dest / "GTSRB"
    assert not list(dest.rglob("*.part"))
    assert {e.task for e in events} == {f"download {a.name}" for a in archives}

    downloaded, original = load_gtsrb(root), load_gtsrb(official.base, use_cache=False)
    assert downloaded.layout == "official"
    for split in SPLITS:
        assert torch.equal(downloaded.split(split).images, original.split(split).images)
        assert torch.equal(downloaded.split(split).labels, original.split(split).labels)
    assert downloaded.test.labels.tolist() == official.test_labels

    # Archives already present with the right checksum are not fetched again.
    again = download_official(dest, base_url=base_url(tmp_path / "offline"), archives=archives)
    assert again == root
    assert torch.equal(load_gtsrb(again).test.labels, downloaded.test.labels)


def test_wrong_md5_is_refused_and_leaves_nothing(mirror, tmp_path):
    folder, archives = mirror
    dest = tmp_path / "download"
    bad = [Archive(archives[0].name, "0" * 32)]
    with pytest.raises(DataError, match="MD5"):
        download_official(dest, base_url=base_url(folder), archives=bad)
    assert list(dest.iterdir()) == []


def test_unreachable_archive_is_a_data_error(tmp_path):
    dest = tmp_path / "download"
    with pytest.raises(DataError, match="downloading"):
        download_official(dest, base_url=base_url(tmp_path / "nowhere"), archives=[Archive("x.zip", "0" * 32)])
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("member", ["../evil.txt", "GTSRB/../../evil.txt", "/tmp/poisonlab-evil.txt"])
def test_archive_members_outside_dest_are_refused(tmp_path, member):
    folder = tmp_path / "mirror"
    folder.mkdir()
    archive = folder / "GTSRB_Final_Test_GT.zip"
    with zipfile.ZipFile(archive, "w") as bundle:
        bundle.writestr("GT-final_test.csv", "Filename;ClassId\n")
        bundle.writestr(member, "escaped")
    dest = tmp_path / "sub" / "download"
    with pytest.raises(DataError, match="outside"):
        download_official(dest, base_url=base_url(folder), archives=[Archive(archive.name, md5(archive))])
    assert not (tmp_path / "sub" / "evil.txt").exists()
    assert not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/poisonlab-evil.txt").exists()
    assert not (dest / "GT-final_test.csv").exists(), "nothing is unpacked from a refused archive"


def test_a_damaged_zip_is_a_data_error(tmp_path):
    archive = tmp_path / "broken.zip"
    archive.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="not a valid zip"):
        safe_extract(archive, tmp_path / "out")
