"""Shared fixtures: the real GTSRB (decoded once per session, through the on-disk cache),
private cache folders, and a small generated class-folder tree; the test tiers.

Every test is marked from the fixtures it uses (directly or through other fixtures): `data`
when it reads the real GTSRB, `training` when it trains a model, `browser` when it drives
Chromium; a test that reaches them another way is marked where it is written, as are `cli` (a
subprocess: the command line or a second process) and `slow`. `fast` is what is left
(`pytest -m fast`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent

# Set before core is imported anywhere, so every test and subprocess sees the same data.
os.environ.setdefault("GTSRB_DIR", str((ROOT.parent / "shared" / "data" / "gtsrb").resolve()))

from core.data import dataset_cache_path, load_gtsrb  # noqa: E402
from trees import make_class_folder_tree  # noqa: E402


DATA_FIXTURES = {"gtsrb", "gtsrb_cache_file", "seeded_cache"}
TRAINING_FIXTURES = {"small_victim", "quick_run", "tiny_run", "tiny_artifact", "tiny", "quick", "small_experiment",
                     "small_heatmaps", "small_cache"}
BROWSER_FIXTURES = {"browser", "server"}
TIERS = (("data", DATA_FIXTURES), ("training", TRAINING_FIXTURES), ("browser", BROWSER_FIXTURES))


def pytest_collection_modifyitems(config, items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for marker, fixtures in TIERS:
            if used & fixtures:
                item.add_marker(marker)
        if not any(item.get_closest_marker(name) for name in ("data", "training", "browser", "cli", "slow")):
            item.add_marker("fast")


@pytest.fixture(autouse=True)
def _fast_tests_read_no_data(request, monkeypatch):
    """A `fast` test that reaches for GTSRB fails at once instead of quietly slowing the tier."""
    if request.node.get_closest_marker("fast"):
        monkeypatch.setenv("GTSRB_DIR", str(ROOT / "no-gtsrb-in-the-fast-tier--mark-the-test-data"))


@pytest.fixture(scope="session")
def gtsrb():
    """The real data set; the first run of the suite decodes it into the shared cache."""
    return load_gtsrb()


@pytest.fixture(scope="session")
def gtsrb_cache_file(gtsrb) -> Path:
    """The decoded-data file in the shared cache that `gtsrb` came from."""
    path = dataset_cache_path()
    assert path.is_file(), path
    return path


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch) -> Path:
    """An empty private cache folder, used by core for the duration of one test."""
    path = tmp_path / "cache"
    path.mkdir()
    monkeypatch.setenv("POISONLAB_CACHE", str(path))
    return path


def link_or_copy(source: Path, folder: Path) -> Path:
    """Put `source` into `folder` without copying 160 MB when a hard link is possible.

    Artifacts are only ever replaced by rename, never rewritten in place, so sharing the
    inode cannot let a test damage the shared cache.
    """
    target = folder / source.name
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


@pytest.fixture
def seeded_cache(tmp_path, monkeypatch, gtsrb_cache_file) -> Path:
    """A private cache that already holds the decoded real data (so nothing is re-decoded)
    but no models, so anything trained in it is trained afresh."""
    path = tmp_path / "seeded-cache"
    path.mkdir()
    link_or_copy(gtsrb_cache_file, path)
    monkeypatch.setenv("POISONLAB_CACHE", str(path))
    return path


@pytest.fixture
def class_tree(tmp_path):
    """A generated class-folder tree and, per split folder, its (label, colour) in load order."""
    root = tmp_path / "gtsrb"
    return root, make_class_folder_tree(root)


@pytest.fixture(scope="session")
def small_victim(gtsrb):
    """A ThesisNet trained for about 12 s on 6,000 real images (about 83 % test accuracy) and
    16 test images it classifies correctly: a quick, real target for attacks and the defense."""
    import torch

    from core.experiment import ExperimentConfig, train_or_load
    from core.models import predict
    from core.train import TrainConfig

    config = ExperimentConfig(train=TrainConfig(subset=6000, max_epochs=4, batch_size=128, augment=False))
    model = train_or_load(config, gtsrb, use_cache=False).model.eval()
    images = gtsrb.test.images[:200].float() / 255
    labels = gtsrb.test.labels[:200]
    right = torch.nonzero(predict(model, images) == labels).flatten()[:16]
    assert len(right) == 16
    return model, images[right], labels[right]


@pytest.fixture(scope="session")
def quick(gtsrb):
    """A small real ThesisNet trained on the default attack (not cached), and its training split:
    the model of the LRP and heatmap tests (trains in ~5 s on two cores; enough for BatchNorm
    statistics far from (0, 1) and a learnt backdoor)."""
    from core.experiment import ExperimentConfig, poisoned_data, train_or_load
    from core.train import TrainConfig

    config = ExperimentConfig(train=TrainConfig(subset=3000, max_epochs=2, batch_size=128, augment=False))
    trained = train_or_load(config, gtsrb, use_cache=False)
    model = trained.model.eval()
    for norm in (model.norm2, model.norm4):  # folding must have something to fold
        assert norm.running_mean.abs().max() > 0.1
        assert (norm.running_var - 1).abs().max() > 0.1
    return model, poisoned_data(gtsrb, config).train


@pytest.fixture(scope="session")
def virelay_python() -> Path:
    """The interpreter of a private venv holding the ViRelAy viewer (PyPI `virelay`), built on
    first use: its pins (pillow < 11) clash with ours, so it cannot share our venv."""
    import subprocess
    import sys

    venv = Path(__file__).resolve().parent.parent / ".venv-virelay"
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([str(python), "-c", "import virelay"], capture_output=True).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "virelay==0.6.1"], capture_output=True, text=True, timeout=1200)
    if installed.returncode != 0:
        message = f"virelay could not be installed: {installed.stderr[-2000:]}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return python
