"""The device setting: which values it takes, how auto resolves, what a missing GPU says, and that
the device stays out of artifacts' names but in their metadata. The CPU/GPU comparison of each
step's output is bench/device.py, run where a GPU is."""

from __future__ import annotations

import threading

import pytest
import torch

from core import cache
from core.cli import build_parser
from core.device import DEVICE_ENV, DeviceConfig, check_device, compute_device, describe, model_on, resolve, use_device, using
from core.errors import ConfigError
from core.models import ThesisNet, predict
from core.study import CELLS_PER_GPU, _worker_environment, task_resources

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without a CUDA GPU answers")


@pytest.fixture(autouse=True)
def _no_device_from_the_environment(monkeypatch):
    monkeypatch.delenv(DEVICE_ENV, raising=False)


@pytest.mark.parametrize("text, expected", [("auto", "auto"), ("CPU", "cpu"), (" cuda ", "cuda"), ("cuda:0", "cuda:0"), ("cuda:12", "cuda:12")])
def test_device_names_are_normalised(text, expected):
    assert check_device(text) == expected
    assert DeviceConfig(text).device == expected


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "cuda:123", "cuda0", "", "mps", 0, None])
def test_a_device_outside_the_list_is_refused_naming_it(bad):
    with pytest.raises(ConfigError, match="auto, cpu, cuda or cuda:N") as error:
        DeviceConfig(bad)
    assert repr(bad) in str(error.value)


@NO_GPU
@pytest.mark.parametrize("missing", ["cuda", "cuda:0", "cuda:3"])
def test_a_gpu_this_machine_lacks_is_one_error_before_any_work(missing):
    with pytest.raises(ConfigError, match="not available: torch sees no CUDA GPU") as error:
        use_device(missing)
    assert repr(missing) in str(error.value) and "\n" not in str(error.value)


@NO_GPU
def test_auto_is_the_environment_setting_else_the_cpu_here(monkeypatch):
    assert resolve("auto") == torch.device("cpu") == compute_device()
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert resolve("auto") == torch.device("cpu")
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    with pytest.raises(ConfigError, match=rf"^\${DEVICE_ENV}: device 'cuda' is not available"):
        resolve("auto")
    monkeypatch.setenv(DEVICE_ENV, "tpu")
    with pytest.raises(ConfigError, match=rf"^\${DEVICE_ENV}: device must be"):
        resolve("auto")
    assert resolve("cpu") == torch.device("cpu"), "an explicit choice does not read the environment"


def test_a_choice_holds_in_its_block_and_thread_only():
    seen = {}
    with using("cpu") as device:
        assert device == compute_device() == torch.device("cpu")
        worker = threading.Thread(target=lambda: seen.update(other=compute_device()))
        worker.start()
        worker.join()
    assert seen["other"] == resolve("auto")
    assert "cpu" in describe(torch.device("cpu")) and "threads" in describe(torch.device("cpu"))


def test_on_the_cpu_a_step_works_on_the_model_itself():
    model = ThesisNet().eval()
    with using("cpu"):
        assert model_on(model) is model
        images = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
        predicted = predict(model, images)
    assert predicted.device.type == "cpu" and predicted.shape == (5,)
    assert next(model.parameters()).device.type == "cpu"


def test_study_steps_ask_for_a_gpu_share_only_where_the_cluster_has_gpus():
    assert task_resources({"CPU": 2.0}) == {"num_cpus": 1}
    assert task_resources({"CPU": 16.0, "GPU": 1.0}) == {"num_cpus": 1, "num_gpus": 1 / CELLS_PER_GPU}
    assert task_resources({"CPU": 16.0, "GPU": 2.0}, "cuda") == {"num_cpus": 1, "num_gpus": 1 / CELLS_PER_GPU}
    assert task_resources({"CPU": 16.0, "GPU": 1.0}, "cpu") == {"num_cpus": 1}
    with pytest.raises(ConfigError, match="the Ray cluster has no GPU"):
        task_resources({"CPU": 2.0}, "cuda")
    assert _worker_environment("cpu")[DEVICE_ENV] == "cpu", "a step given no GPU share stays on the CPU of a GPU node"
    assert DEVICE_ENV not in _worker_environment("auto")


def test_every_computing_command_takes_the_device():
    parser = build_parser()
    computing = ("train", "heatmaps", "spectral", "baselines", "detect", "defend", "spatial", "cleanse", "inspect", "export", "study")
    for command in computing:
        options = {option for action in parser.command_parsers[command]._actions for option in action.option_strings}
        assert "--device" in options, command


def test_the_device_is_recorded_in_the_metadata_and_never_in_the_name(tmp_path, monkeypatch):
    monkeypatch.setenv("POISONLAB_CACHE", str(tmp_path))
    path = tmp_path / f"table-{cache.config_hash('x')}.safetensors"
    with using("cpu"):
        value = cache.cached(path, lambda: {"answer": 42}, lambda v: ({}, v), cache.meta_only)
    assert value == {"answer": 42}
    meta = cache.artifact_meta(path)
    assert meta["computed_on"] == describe(torch.device("cpu")) and meta["answer"] == 42
    (row,) = cache.list_artifacts(tmp_path)
    assert row.computed_on == describe(torch.device("cpu")) and "computed_on" not in row.parameters
    again = cache.cached(path, lambda: pytest.fail("recomputed"), lambda v: ({}, v), cache.meta_only)
    assert again == value, "a table read back is the table computed, wherever it was computed"
