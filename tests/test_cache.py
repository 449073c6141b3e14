"""The artifact store: checksummed safetensors files, atomic writes, and config hashes."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import core.cache
import core.errors
import core.models
from core.cache import canonical_json, config_hash, load_artifact, save_artifact, tensors_checksum
from core.errors import ArtifactError
from core.experiment import ExperimentConfig
from core.poison import PoisonConfig
from core.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def sample_tensors():
    generator = torch.Generator().manual_seed(0)
    return {
        "mask": torch.tensor([True, False, True, True, False]),
        "labels": torch.tensor([2, 5, -1, 2**40], dtype=torch.int64),
        "weights": torch.randn(2, 3, generator=generator),
        "images": torch.randint(0, 256, (2, 3, 4, 4), generator=generator, dtype=torch.uint8),
        "empty": torch.zeros(0, 3),
    }


META = {"name": "tiny", "metrics": {"clean_accuracy": 0.9632, "history": [{"epoch": 1, "loss": 2.5}]}, "note": "50 km/h → 80 km/h"}


def assert_same_tensors(a, b) -> None:
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].shape == b[key].shape, key
        assert torch.equal(a[key], b[key]), key


def test_round_trip(tmp_path):
    path = tmp_path / "a.safetensors"
    tensors = sample_tensors()
    save_artifact(path, tensors, META)
    loaded, meta = load_artifact(path)
    assert_same_tensors(loaded, tensors)
    assert meta == {**META, "checksum": tensors_checksum(tensors)}


def test_non_contiguous_and_grad_tensors_are_stored_by_value(tmp_path):
    path = tmp_path / "a.safetensors"
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {"t": base.T, "p": torch.nn.Parameter(torch.ones(2))}
    save_artifact(path, tensors, {})
    loaded, _ = load_artifact(path)
    assert torch.equal(loaded["t"], base.T) and torch.equal(loaded["p"], torch.ones(2))


def test_file_is_plain_safetensors(tmp_path):
    """Readable by any safetensors reader: no pickle, a JSON header after an 8-byte length."""
    path = tmp_path / "a.safetensors"
    save_artifact(path, sample_tensors(), META)
    raw = path.read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    assert set(header) - {"__metadata__"} == set(sample_tensors())


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_artifact(tmp_path / "absent.safetensors")


def _saved(tmp_path) -> Path:
    path = tmp_path / "a.safetensors"
    save_artifact(path, sample_tensors(), META)
    return path


@pytest.mark.parametrize("keep", [0, 1, 7, 8, 9, 100, -1], ids=lambda k: f"keep{k}")
def test_truncated_file_is_an_artifact_error(tmp_path, keep):
    path = _saved(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:keep])
    with pytest.raises(ArtifactError, match=str(path)):
        load_artifact(path)


def test_every_single_bit_flip_is_detected(tmp_path):
    """Flip each bit of a small artifact in turn: no flip may load as different content.

    This covers the tensor data, the safetensors header and the metadata, which carries
    results (a model's metrics) and so must be as trustworthy as the tensors.
    """
    path = _saved(tmp_path)
    raw = path.read_bytes()
    expected_tensors, expected_meta = load_artifact(path)
    damaged = tmp_path / "damaged.safetensors"
    undetected = []
    for position in range(len(raw)):
        for bit in range(8):
            flipped = bytearray(raw)
            flipped[position] ^= 1 << bit
            damaged.write_bytes(bytes(flipped))
            try:
                tensors, meta = load_artifact(damaged)
            except ArtifactError:
                continue
            same = meta == expected_meta and set(tensors) == set(expected_tensors) and all(
                tensors[k].dtype == expected_tensors[k].dtype and torch.equal(tensors[k], expected_tensors[k]) for k in tensors
            )
            if not same:
                undetected.append((position, bit))
    assert not undetected, f"{len(undetected)} flips loaded silently, first at byte {undetected[0][0]}"


def test_meta_without_its_checksum_is_rejected(tmp_path):
    """A file written without the metadata checksum cannot vouch for its metadata."""
    from safetensors.torch import save_file

    tensors = sample_tensors()
    path = tmp_path / "old.safetensors"
    save_file(tensors, str(path), metadata={"poisonlab.meta": json.dumps(META), "poisonlab.sha256": tensors_checksum(tensors)})
    with pytest.raises(ArtifactError):
        load_artifact(path)


# --- atomic writes -----------------------------------------------------------------------------


class _FailingHandle:
    """Writes half of what it is given, then fails like a full disk (or a Ctrl-C)."""

    def __init__(self, handle, error):
        self.handle, self.error = handle, error

    def write(self, data):
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        raise self.error

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()
        return False


@pytest.mark.parametrize("error", [OSError(28, "No space left on device"), KeyboardInterrupt()], ids=["disk-full", "interrupt"])
@pytest.mark.parametrize("existing", [False, True], ids=["new", "replace"])
def test_failed_write_leaves_no_partial_file(tmp_path, monkeypatch, error, existing):
    path = tmp_path / "model.safetensors"
    old = {"w": torch.full((4,), 7.0)}
    if existing:
        save_artifact(path, old, {"version": "old"})
    real_fdopen = os.fdopen
    monkeypatch.setattr(core.cache.os, "fdopen", lambda fd, mode: _FailingHandle(real_fdopen(fd, mode), error))

    with pytest.raises(type(error)):
        save_artifact(path, sample_tensors(), META)

    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == (["model.safetensors"] if existing else [])
    if existing:
        tensors, meta = load_artifact(path)
        assert torch.equal(tensors["w"], old["w"]) and meta["version"] == "old"


def test_successful_write_leaves_only_the_artifact(tmp_path):
    folder = tmp_path / "new" / "folder"
    for version in range(3):
        save_artifact(folder / "a.safetensors", {"x": torch.tensor([version])}, {"v": version})
    assert [p.name for p in folder.iterdir()] == ["a.safetensors"]
    tensors, meta = load_artifact(folder / "a.safetensors")
    assert tensors["x"].tolist() == [2] and meta["v"] == 2
    assert (folder / "a.safetensors").stat().st_mode & 0o777 == 0o644


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("POISONLAB_CACHE", str(tmp_path / "elsewhere"))
    assert core.cache.cache_dir() == tmp_path / "elsewhere"
    assert (tmp_path / "elsewhere").is_dir()
    monkeypatch.delenv("POISONLAB_CACHE")
    assert core.cache.cache_dir() == ROOT / "cache"


# --- config hashes -----------------------------------------------------------------------------

# One valid alternative value for every field: a field added to a config must be added here,
# or the completeness check below fails.
POISON_CHANGES = {
    "source": 14, "target": 1, "size": 3, "color": (255, 0, 0), "x_range": (10, 12),
    "y_range": (16, 18), "fraction": 0.2, "seed": 1, "kind": "label-consistent", "amplitude": 64, "perturbation": 16.0,
}
TRAIN_CHANGES = {
    "architecture": "inception_v3", "max_epochs": 21, "patience": 4, "batch_size": 128, "learning_rate": 1e-3,
    "weight_decay": 1e-4, "augment": False, "subset": 1000, "seed": 1,
    "schedule": "constant", "augmentation": "thesis",
}


def variants():
    base = ExperimentConfig()
    yield "default", base
    for name, value in POISON_CHANGES.items():
        # the perturbation budget is the label-consistent attack's; the sticker attack does not read it
        changes = {"kind": "label-consistent", name: value} if name == "perturbation" else {name: value}
        yield f"poison.{name}", ExperimentConfig(poison=dataclasses.replace(base.poison, **changes))
    for name, value in TRAIN_CHANGES.items():
        yield f"train.{name}", ExperimentConfig(train=dataclasses.replace(base.train, **{name: value}))


def test_change_table_covers_every_field():
    assert set(POISON_CHANGES) == {f.name for f in dataclasses.fields(PoisonConfig)}
    assert set(TRAIN_CHANGES) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert {f.name for f in dataclasses.fields(ExperimentConfig)} == {"poison", "train"}


def test_config_hash_is_sensitive_to_every_field():
    hashes = {label: config_hash(config) for label, config in variants()}
    by_value = {}
    for label, value in hashes.items():
        assert value not in by_value, f"{label} and {by_value.get(value)} hash alike"
        by_value[value] = label
    dict_hashes = {config_hash(config.to_dict()) for _, config in variants()}
    assert len(dict_hashes) == len(hashes)


def test_config_hash_is_stable():
    config = ExperimentConfig()
    assert config_hash(config) == config_hash(ExperimentConfig())
    assert config_hash(config.to_dict()) == config_hash(ExperimentConfig.from_dict(json.loads(json.dumps(config.to_dict()))).to_dict())
    assert config_hash(PoisonConfig(color=[245, 255, 0])) == config_hash(PoisonConfig())
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": (1, 2), "a": 1})
    assert len(config_hash(config)) == 16 and int(config_hash(config), 16) >= 0
    assert config_hash(config, length=32).startswith(config_hash(config))


@pytest.mark.cli
def test_config_hash_is_the_same_in_another_process():
    """Artifacts are shared between the app, the CLI and later runs: no per-process salt."""
    code = "from core.cache import config_hash; from core.experiment import ExperimentConfig; print(config_hash(1, 'x', ExperimentConfig().to_dict()))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == config_hash(1, "x", ExperimentConfig().to_dict())


def test_canonical_json_is_sorted_and_compact():
    text = canonical_json({"b": 1, "a": (1, 2)})
    assert text == '{"a":[1,2],"b":1}'


WRITER = """
import sys, torch
from core.cache import save_artifact
path, = sys.argv[1:]
version = 0
while True:  # a large artifact rewritten forever, each version filled with its own number
    version += 1
    save_artifact(path, {"data": torch.full((4_000_000,), float(version))}, {"version": version})
    print(version, flush=True)
"""


@pytest.mark.cli
def test_a_writer_killed_mid_write_never_leaves_a_partial_artifact_to_read(tmp_path):
    """SIGKILL a process that keeps rewriting a 16 MB artifact while this one keeps reading it:
    every read is a whole, verified version; the leftover temporary files are listed as
    partial writes and can be deleted, and the artifact itself still loads."""
    import signal
    import time

    from core.cache import delete_artifacts, list_artifacts

    path = tmp_path / "model-test-0123456789abcdef.safetensors"
    reads = 0
    for kill_after in (0.3, 0.7, 1.1, 1.6):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip()  # at least one version is complete
        deadline = time.time() + kill_after
        while time.time() < deadline:
            tensors, meta = load_artifact(path)  # never ArtifactError: a reader sees the old file or the new one
            assert torch.equal(tensors["data"], torch.full((4_000_000,), float(meta["version"])))
            reads += 1
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        tensors, meta = load_artifact(path)
        assert torch.equal(tensors["data"], torch.full((4_000_000,), float(meta["version"])))
    assert reads > 10
    rows = list_artifacts(tmp_path)
    assert [row.name for row in rows if row.complete] == [path.name]
    partial = [row.name for row in rows if not row.complete]
    assert all(name.startswith(f".{path.name}.") and name.endswith(".tmp") for name in partial)
    assert delete_artifacts(partial, tmp_path) == len(partial)
    assert [row.name for row in list_artifacts(tmp_path)] == [path.name]


def test_the_cache_listing_describes_each_artifact_from_its_header(tmp_path):
    from core.cache import artifact_kind, delete_artifacts, list_artifacts

    save_artifact(tmp_path / "heatmaps-05-composite-ae06449635c2ab86.safetensors", sample_tensors(), META)
    save_artifact(tmp_path / "gtsrb-27c30e838eabdc12.safetensors", sample_tensors(), {"root": "/data/gtsrb"})
    (tmp_path / "model-thesis_net-0000000000000000.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "notes.txt").write_text("not ours")
    rows = {row.name: row for row in list_artifacts(tmp_path)}
    assert set(rows) == {"heatmaps-05-composite-ae06449635c2ab86.safetensors", "gtsrb-27c30e838eabdc12.safetensors",
                         "model-thesis_net-0000000000000000.safetensors"}
    heatmaps = rows["heatmaps-05-composite-ae06449635c2ab86.safetensors"]
    assert heatmaps.kind == "heatmaps-05-composite" and heatmaps.complete
    assert heatmaps.size == (tmp_path / heatmaps.name).stat().st_size
    assert "clean_accuracy" in heatmaps.parameters and "history" not in heatmaps.parameters
    assert rows["gtsrb-27c30e838eabdc12.safetensors"].parameters == '{"root":"/data/gtsrb"}'
    assert rows["model-thesis_net-0000000000000000.safetensors"].parameters.startswith("unreadable header")
    assert artifact_kind("adv-deepfool-linf-657c8086979c6c9c.safetensors") == "adv-deepfool-linf"
    with pytest.raises(core.errors.ConfigError):
        delete_artifacts(["notes.txt"], tmp_path)
    with pytest.raises(core.errors.ConfigError):
        delete_artifacts(["../gtsrb-27c30e838eabdc12.safetensors"], tmp_path)
    assert delete_artifacts(["gtsrb-27c30e838eabdc12.safetensors"], tmp_path) == 1
    assert not (tmp_path / "gtsrb-27c30e838eabdc12.safetensors").exists()
    assert (tmp_path / "notes.txt").exists()


def test_a_computation_shows_its_progress_to_other_processes_until_it_is_stored(tmp_cache):
    import threading

    from core.cache import cached, progress_elsewhere
    from core.progress import report

    path = tmp_cache / "thing-0123456789abcdef.safetensors"  # its own cache and locks: nothing else computes there
    assert progress_elsewhere(path.name) is None
    reported, finish = threading.Event(), threading.Event()

    def compute():
        report(None, "steps", 2, 8, "step 2 of 8")  # no callback given: the other processes hear of it all the same
        reported.set()
        finish.wait(30)
        return torch.ones(2)

    worker = threading.Thread(target=cached, args=(path, compute, lambda t: ({"t": t}, {}), lambda tensors, meta: tensors["t"]))
    worker.start()
    try:
        assert reported.wait(30)
        computing = progress_elsewhere(path.name)
        assert computing.pid == os.getpid() and computing.started <= time.time()
        assert (computing.progress.done, computing.progress.total, computing.progress.message) == (2, 8, "step 2 of 8")
    finally:
        finish.set()
        worker.join(30)
    assert progress_elsewhere(path.name) is None and path.is_file()
    assert not list(core.cache.lock_dir().glob("*.progress"))
