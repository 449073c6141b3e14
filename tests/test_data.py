"""GTSRB loading: the real split, errors on broken trees, and the decoded-data cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import core.data
from core.cache import load_artifact
from core.data import CLASS_NAMES, NUM_CLASSES, SPLITS, load_gtsrb
from core.errors import DataError
from trees import SPLIT_FOLDERS, make_class_folder_tree, pixels, write_image


@pytest.fixture(autouse=True)
def _private_cache(tmp_cache):
    """Generated trees must never leave their decoded copies in the shared cache."""


def cache_files(folder: Path):
    return sorted(folder.glob("gtsrb-*.safetensors"))


def assert_same_data(a, b) -> None:
    for split in SPLITS:
        assert torch.equal(a.split(split).images, b.split(split).images), split
        assert torch.equal(a.split(split).labels, b.split(split).labels), split
    assert a.content_id == b.content_id


# --- the real data set -----------------------------------------------------------------


def test_real_split_sizes_and_classes(gtsrb):
    assert (len(gtsrb.train), len(gtsrb.val), len(gtsrb.test)) == (34_799, 4_440, 12_630)
    assert gtsrb.layout == "class-folders"
    for split in SPLITS:
        counts = gtsrb.split(split).class_counts()
        assert len(counts) == NUM_CLASSES
        assert min(counts) > 0, f"{split} lacks classes {[c for c, n in enumerate(counts) if n == 0]}"


def test_real_tensors_have_the_core_layout(gtsrb):
    for split in SPLITS:
        data = gtsrb.split(split)
        assert data.images.dtype == torch.uint8
        assert data.images.shape == (len(data), 3, 32, 32)
        assert data.labels.dtype == torch.int64
        assert data.labels.shape == (len(data),)
        assert int(data.labels.min()) == 0 and int(data.labels.max()) == NUM_CLASSES - 1
    sample = gtsrb.test.images[:64]
    as_float = gtsrb.test.float_images()[:64]
    assert as_float.dtype == torch.float32
    assert torch.equal((as_float * 255).round().to(torch.uint8), sample)
    # Photographs, not a constant fill: every image has some contrast.
    assert bool((sample.flatten(1).float().std(dim=1) > 1).all())


def test_real_data_comes_from_gtsrb_dir(gtsrb):
    assert gtsrb.root == str(Path(os.environ["GTSRB_DIR"]).resolve())
    with pytest.raises(ValueError, match="unknown split"):
        gtsrb.split("training")


def test_class_names():
    assert len(CLASS_NAMES) == NUM_CLASSES == 43
    assert len(set(CLASS_NAMES)) == 43
    assert CLASS_NAMES[2] == "Speed limit (50km/h)"
    assert CLASS_NAMES[5] == "Speed limit (80km/h)"
    assert CLASS_NAMES[14] == "Stop"


# --- a generated tree --------------------------------------------------------------------


def test_generated_tree_round_trips_labels_and_pixels(class_tree):
    root, expected = class_tree
    data = load_gtsrb(root)
    assert data.layout == "class-folders"
    assert data.root == str(root.resolve())
    for split, folder in zip(SPLITS, SPLIT_FOLDERS):
        loaded = data.split(split)
        assert loaded.labels.tolist() == [label for label, _ in expected[folder]]
        assert loaded.images.dtype == torch.uint8 and loaded.labels.dtype == torch.int64
        for image, (_, color) in zip(loaded.images, expected[folder]):
            assert np.array_equal(image.numpy(), pixels(color))


def test_images_load_in_natural_file_order(class_tree):
    root, expected = class_tree
    folder = root / "Training" / "00000"  # holds 0.png and 1.png
    write_image(folder / "10.png", (1, 2, 3))
    write_image(folder / "2.png", (4, 5, 6))
    (folder / "notes.txt").write_text("not an image")
    train = load_gtsrb(root).train
    first = [tuple(int(v) for v in image[:, 0, 0]) for image in train.images[:4]]
    assert first == [expected["Training"][0][1], expected["Training"][1][1], (4, 5, 6), (1, 2, 3)]
    assert len(train) == len(expected["Training"]) + 2


def test_other_image_formats_decode(tmp_path):
    root = tmp_path / "gtsrb"
    make_class_folder_tree(root, per_class=1, suffix=".ppm")
    # A grey-scale JPEG and a palette PNG are converted to RGB.
    Image.new("L", (32, 32), 90).save(root / "Testing" / "00001" / "7.jpeg", quality=100)
    Image.new("RGB", (32, 32), (255, 0, 0)).convert("P").save(root / "Testing" / "00001" / "8.png")
    data = load_gtsrb(root)
    assert len(data.test) == NUM_CLASSES + 2
    grey, palette = data.test.images[2], data.test.images[3]  # class 1: 0.ppm, 7.jpeg, 8.png
    assert bool((grey == grey[0:1]).all()), "a grey image has equal channels"
    assert abs(int(grey[0, 16, 16]) - 90) <= 2
    assert np.array_equal(palette.numpy(), pixels((255, 0, 0)))


def test_progress_reports_reach_the_total(class_tree):
    root, expected = class_tree
    events = []
    load_gtsrb(root, use_cache=False, progress=events.append)
    total = sum(len(rows) for rows in expected.values())
    assert events and events[-1].done == events[-1].total == total
    assert events[-1].fraction == 1.0


# --- errors ------------------------------------------------------------------------------


def assert_helpful(error: DataError, path: Path | None) -> None:
    message = str(error)
    assert "GTSRB_DIR" in message, message
    if path is not None:
        assert str(path) in message, message


def test_unset_gtsrb_dir(monkeypatch, tmp_cache):
    monkeypatch.delenv("GTSRB_DIR", raising=False)
    with pytest.raises(DataError) as caught:
        load_gtsrb()
    assert_helpful(caught.value, None)
    assert "not set" in str(caught.value)
    assert not any(tmp_cache.iterdir())


@pytest.mark.parametrize("via_env", [True, False], ids=["env", "argument"])
def test_missing_directory(tmp_path, monkeypatch, tmp_cache, via_env):
    missing = tmp_path / "no-such-gtsrb"
    if via_env:
        monkeypatch.setenv("GTSRB_DIR", str(missing))
    with pytest.raises(DataError) as caught:
        load_gtsrb() if via_env else load_gtsrb(missing)
    assert_helpful(caught.value, missing)
    assert "does not exist" in str(caught.value)
    assert not any(tmp_cache.iterdir())


def test_a_file_is_not_a_gtsrb_folder(tmp_path):
    not_a_folder = tmp_path / "gtsrb.zip"
    not_a_folder.write_bytes(b"PK")
    with pytest.raises(DataError) as caught:
        load_gtsrb(not_a_folder)
    assert_helpful(caught.value, not_a_folder)


def test_wrong_layout(tmp_path, tmp_cache):
    root = tmp_path / "photos"
    (root / "holiday").mkdir(parents=True)
    (root / "notes.txt").write_text("nothing to see")
    write_image(root / "holiday" / "beach.png", (0, 0, 255))
    with pytest.raises(DataError) as caught:
        load_gtsrb(root)
    assert_helpful(caught.value, root.resolve())
    assert "holiday" in str(caught.value), "the message shows what was found instead"
    assert not any(tmp_cache.iterdir())


def _break_tree(root: Path, how: str) -> Path:
    """Damage a generated tree; returns the path the error message must name."""
    if how == "empty class folder":
        folder = root / "Training" / "00007"
        shutil.rmtree(folder)
        folder.mkdir()
        (folder / "readme.txt").write_text("no images here")
        return folder.resolve()
    if how == "corrupt image":
        bad = root / "Validation" / "00003" / "1.png"
        bad.write_bytes(b"\x89PNG this is not really an image")
        return bad.resolve()
    if how == "truncated image":
        bad = root / "Testing" / "00040" / "0.png"
        write_image(bad, (10, 20, 30), size=(32, 32))
        content = bad.read_bytes()
        bad.write_bytes(content[: len(content) // 2])
        return bad.resolve()
    if how == "non-class folder":
        stray = root / "Training" / "__MACOSX"
        stray.mkdir()
        return stray.resolve()
    if how == "class id out of range":
        stray = root / "Validation" / "00043"
        write_image(stray / "0.png", (1, 1, 1))
        return stray.resolve()
    if how == "missing class folder":
        shutil.rmtree(root / "Training" / "00042")
        return (root / "Training").resolve()
    if how == "missing split folder":
        shutil.rmtree(root / "Testing")
        return (root / "Testing").resolve()
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "empty class folder",
        "corrupt image",
        "truncated image",
        "non-class folder",
        "class id out of range",
        "missing class folder",
        "missing split folder",
    ],
)
def test_broken_tree_is_a_clear_data_error(class_tree, tmp_cache, how):
    root, _ = class_tree
    named = _break_tree(root, how)
    with pytest.raises(DataError) as caught:
        load_gtsrb(root)
    assert_helpful(caught.value, named)
    assert not cache_files(tmp_cache), "nothing half-decoded is cached"


def test_missing_class_folder_message_lists_the_class(class_tree):
    root, _ = class_tree
    shutil.rmtree(root / "Training" / "00042")
    with pytest.raises(DataError, match="00042"):
        load_gtsrb(root)


# --- the decoded-data cache --------------------------------------------------------------


def _no_decoding(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("decoded an image although the cache holds the data set")

    monkeypatch.setattr(core.data, "decode_image", refuse)


def _counting_decoder(monkeypatch):
    calls = []
    original = core.data.decode_image

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(core.data, "decode_image", counting)
    return calls


def test_second_load_is_served_from_the_cache(class_tree, tmp_cache, monkeypatch):
    root, expected = class_tree
    first = load_gtsrb(root)
    files = cache_files(tmp_cache)
    assert len(files) == 1
    tensors, meta = load_artifact(files[0])
    assert meta["layout"] == "class-folders"
    assert torch.equal(tensors["train_images"], first.train.images)

    _no_decoding(monkeypatch)
    second = load_gtsrb(root)
    assert_same_data(first, second)
    assert cache_files(tmp_cache) == files


def test_without_the_cache_nothing_is_read_or_written(class_tree, tmp_cache, monkeypatch):
    root, expected = class_tree
    load_gtsrb(root)
    calls = _counting_decoder(monkeypatch)
    load_gtsrb(root, use_cache=False)
    assert len(calls) == sum(len(rows) for rows in expected.values())
    assert len(cache_files(tmp_cache)) == 1


def _truncate(path: Path) -> None:
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def _flip_tensor_byte(path: Path) -> None:
    content = bytearray(path.read_bytes())
    content[-100] ^= 0x10  # inside the last tensor's data
    path.write_bytes(bytes(content))


def _flip_header_byte(path: Path) -> None:
    content = bytearray(path.read_bytes())
    index = content.index(b"class-folders")
    content[index] ^= 0x01  # "class-folders" -> "blass-folders": still valid JSON
    path.write_bytes(bytes(content))


def _empty(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize("damage", [_truncate, _flip_tensor_byte, _flip_header_byte, _empty])
def test_damaged_cache_is_detected_and_rebuilt(class_tree, tmp_cache, monkeypatch, damage):
    root, expected = class_tree
    first = load_gtsrb(root)
    (cache_file,) = cache_files(tmp_cache)
    damage(cache_file)

    calls = _counting_decoder(monkeypatch)
    rebuilt = load_gtsrb(root)
    assert len(calls) == sum(len(rows) for rows in expected.values()), "the data was decoded again"
    assert_same_data(first, rebuilt)
    assert cache_files(tmp_cache) == [cache_file]
    tensors, meta = load_artifact(cache_file)  # whole again
    assert meta["layout"] == "class-folders"

    _no_decoding(monkeypatch)
    assert_same_data(first, load_gtsrb(root))


def test_changed_image_invalidates_the_cache(class_tree, tmp_cache):
    root, expected = class_tree
    first = load_gtsrb(root)
    image = root / "Training" / "00004" / "0.png"
    index = [i for i, (label, _) in enumerate(expected["Training"]) if label == 4][0]
    before = os.stat(image)
    write_image(image, (7, 77, 177))
    # An edit happens after the tree was written; within the same test it could share the
    # file-system clock tick, so give it the later time any real edit has.
    os.utime(image, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))

    second = load_gtsrb(root)
    assert np.array_equal(second.train.images[index].numpy(), pixels((7, 77, 177)))
    assert np.array_equal(first.train.images[index].numpy(), pixels(expected["Training"][index][1]))
    assert second.content_id != first.content_id
    assert len(cache_files(tmp_cache)) == 2


def test_added_image_invalidates_the_cache(class_tree, tmp_cache):
    root, expected = class_tree
    first = load_gtsrb(root)
    write_image(root / "Training" / "00009" / "5.png", (9, 99, 199))
    second = load_gtsrb(root)
    assert len(second.train) == len(first.train) + 1
    added = [i for i, image in enumerate(second.train.images) if np.array_equal(image.numpy(), pixels((9, 99, 199)))]
    assert len(added) == 1 and int(second.train.labels[added[0]]) == 9
    assert len(cache_files(tmp_cache)) == 2


def test_removed_image_invalidates_the_cache(class_tree, tmp_cache):
    root, _ = class_tree
    first = load_gtsrb(root)
    (root / "Testing" / "00011" / "1.png").unlink()
    second = load_gtsrb(root)
    assert len(second.test) == len(first.test) - 1
    assert second.test.class_counts()[11] == first.test.class_counts()[11] - 1
