"""AppTest of the home page (the pipeline's state for the active experiment) and of the cache view."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from core.cache import load_artifact, save_artifact
from core.experiment import ExperimentConfig, model_path, train_or_load

from apptest import ROOT, open_page

SMALL = {"subset": "3000", "epochs": "2", "patience": "2"}
HOLDER = """
import sys, time
from pathlib import Path
from core.cache import cached
from core.progress import report

def compute():
    report(None, "training", 3, 10, "epoch 3 of 10")
    print("held", flush=True)
    time.sleep(60)

cached(Path(sys.argv[1]), compute, lambda result: ({}, {}), lambda tensors, meta: None)
"""


def step_states(at) -> dict:
    """Step name → its state badge text, from the home page's step cards."""
    states = {}
    for block in at.markdown:
        text = block.value
        if text.startswith("**") and ". " in text and "-badge[" in text:
            name = text.split(". ", 1)[1].split("**", 1)[0]
            states[name] = text.split("-badge[", 1)[1].rstrip("]").split(": ")[-1]
    return states


def test_home_shows_where_the_experiment_stands(seeded_cache, gtsrb):
    config = ExperimentConfig.from_query(SMALL)
    at = open_page("app.py", SMALL)
    states = step_states(at)
    assert list(states) == ["Poison", "Train", "Explain", "Cluster", "Detect", "Defend"]
    assert states["Train"] == "not yet computed" and states["Explain"] == "not yet computed"
    parameters = {row["parameter"]: row["value"] for row in at.dataframe[0].value.to_dict("records")}
    assert parameters["training subset (0: all)"] == "3000" or parameters["training subset (0: all)"] == 3000

    # Another process (a second server or the CLI) computes the model: the step is running, with that
    # process's progress, on the home page and on the Poison page.
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(model_path(gtsrb, config))],
                              cwd=ROOT, env={**os.environ}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        at.run()
        assert step_states(at)["Train"] == "running"
        assert any(f"running (process {holder.pid}): 30 % epoch 3 of 10" in c.value for c in at.caption), [c.value for c in at.caption]
        poison = open_page("pages/poison.py", SMALL)
        bars = [bar.proto.text for bar in poison.get("progress")]
        assert any(f"Training is running in process {holder.pid}" in text and "epoch 3 of 10" in text for text in bars), bars
        assert not [b for b in poison.button if b.label == "Train model"]  # no second start while another process trains
    finally:
        holder.kill()
        holder.wait()
    at.run()
    assert step_states(at)["Train"] == "not yet computed"  # the killed process left nothing that looks like work

    trained = train_or_load(config, gtsrb)
    at.run()
    states = step_states(at)
    assert states["Train"] == "cached"
    accuracy = f"clean accuracy {100 * trained.metrics['clean_accuracy']:.1f} %"
    assert any(accuracy in caption.value for caption in at.caption)
    links = [link.proto.page for link in at.get("page_link")]
    assert "pages/poison.py" in " ".join(links) or links  # every step links to its view


def test_cache_view_lists_the_artifacts_by_kind(seeded_cache):
    import torch

    save_artifact(seeded_cache / "heatmaps-05-composite-0123456789abcdef.safetensors", {"heatmaps": torch.zeros(3, 32, 32)},
                  {"class_id": 5, "config": {"rule": "composite"}})
    (seeded_cache / ".model-x-0123456789abcdef.safetensors.abc.tmp").write_bytes(b"half")
    at = open_page("pages/cache.py")
    files = at.dataframe[0].value["file"].tolist()
    assert "heatmaps-05-composite-0123456789abcdef.safetensors" in files
    assert any(name.startswith("gtsrb-") for name in files)
    assert {m.label: m.value for m in at.metric}["Partial writes"] == "1"
    at.multiselect(key="cache_kinds").set_value(["heatmaps"]).run()
    assert at.dataframe[0].value["file"].tolist() == ["heatmaps-05-composite-0123456789abcdef.safetensors"]


def test_a_damaged_artifact_is_reported_and_recomputed_never_shown(seeded_cache, gtsrb):
    from core.heatmaps import experiment_heatmaps, heatmaps_path
    from core.lrp import LRPConfig

    config = ExperimentConfig.from_query(SMALL)
    experiment_heatmaps(config, 5, LRPConfig(), gtsrb)
    path = heatmaps_path(model_path(gtsrb, config).name, 5, LRPConfig())
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit in the middle of the tensors
    path.write_bytes(bytes(data))
    import streamlit

    streamlit.cache_resource.clear()  # earlier tests of this process may hold these heatmaps in memory
    at = open_page("pages/heatmaps.py", SMALL)  # reads the file, finds it damaged, recomputes the class's heatmaps
    at.run()
    assert any(path.name in w.value and "damaged" in w.value for w in at.error)
    tensors, _ = load_artifact(path)  # the file on disk is whole again
    fresh = experiment_heatmaps(config, 5, LRPConfig(), gtsrb, use_cache=False)
    assert torch.allclose(tensors["heatmaps"], fresh.heatmaps, atol=1e-5)
    shown = {m.label: m.value for m in at.metric}
    assert shown["Images of the class"] == f"{len(fresh):,}"


def test_the_sidebar_chooses_the_device_and_says_what_it_cannot_use(seeded_cache, monkeypatch):
    from core.device import DEVICE_ENV

    monkeypatch.delenv(DEVICE_ENV, raising=False)
    at = open_page("pages/cache.py", {"device": "cpu"})
    selector = at.selectbox(key="device")
    assert selector.value == "cpu" and at.query_params.get("device") in ("cpu", ["cpu"])
    assert selector.options[0].startswith("auto: ") and selector.options[1].startswith("cpu (")  # each in words
    assert "computed on" in at.dataframe[0].value.columns

    at = open_page("pages/cache.py", {"device": "AUTO"})
    assert at.selectbox(key="device").value == "auto" and "device" not in at.query_params  # the default: the link leaves it out

    at = open_page("pages/cache.py", {"device": "cuda:7"})  # a GPU this machine lacks (or a name it does not know)
    assert at.selectbox(key="device").value == "auto"
    assert any("device = 'cuda:7' could not be used" in error.value for error in at.sidebar.error)

    monkeypatch.setenv(DEVICE_ENV, "tpu")
    at = open_page("pages/cache.py")
    assert not at.exception
    assert any("$POISONLAB_DEVICE" in error.value and "computing on the CPU" in error.value for error in at.sidebar.error)
