"""The cached LRP heatmaps of a class on a really trained network: what they hold, their
cache (one artifact per model, class and rules; damaged files recomputed), the validation of
the class, and the poisoning signal the heatmaps are for."""

from __future__ import annotations

import pytest
import torch

import core.heatmaps as heatmaps_module
from core.cache import load_artifact, save_artifact
from core.errors import ConfigError
from core.experiment import ExperimentConfig, poisoned_data, train_or_load
from core.heatmaps import class_heatmaps, experiment_heatmaps, heatmaps_path
from core.lrp import LRPConfig, explain
from core.models import predict
from core.poison import PoisonConfig, sticker_window

TARGET = PoisonConfig().target
MODEL_FILE = "model-quick-test.safetensors"
RULES = {
    "composite": LRPConfig("composite"),
    "composite-eps1e-9": LRPConfig("composite", epsilon=1e-9),
    "epsilon-0.25": LRPConfig("epsilon", epsilon=0.25),
}


def compute(quick, config=RULES["composite"], class_id=TARGET, **kwargs):
    model, train = quick
    return class_heatmaps(model, MODEL_FILE, train.images, train.labels, train.poison_mask, class_id, config, **kwargs)


TENSOR_FIELDS = ("heatmaps", "indices", "poison_mask", "explained", "logit", "confidence", "predicted")


def assert_same(a, b):
    for field in TENSOR_FIELDS:
        ta, tb = getattr(a, field), getattr(b, field)
        assert ta.dtype == tb.dtype and torch.equal(ta, tb), field
    assert (a.class_id, a.config, a.seconds) == (b.class_id, b.config, b.seconds)


def refuse_to_explain(*args, **kwargs):
    raise AssertionError("heatmaps were recomputed")


def test_class_heatmaps_fit_the_training_split(quick):
    model, train = quick
    result = compute(quick, use_cache=False)
    five = torch.nonzero(train.labels == TARGET).flatten()
    assert torch.equal(result.indices, five) and len(result) == len(five)
    assert bool((train.labels[result.indices] == TARGET).all())
    assert torch.equal(result.poison_mask, train.poison_mask[result.indices])
    assert 0 < int(result.poison_mask.sum()) < len(result)
    assert result.heatmaps.dtype == torch.float32 and result.heatmaps.shape == (len(five), 32, 32)
    assert torch.equal(result.explained, train.labels[five])
    with torch.no_grad():
        logits = model(train.images[five].float() / 255)
    assert torch.allclose(result.logit, logits[:, TARGET], atol=1e-3)
    assert torch.allclose(result.confidence, logits.softmax(1)[:, TARGET], atol=1e-4)
    assert (result.predicted == logits.argmax(1)).double().mean() > 0.99
    assert bool(torch.isfinite(result.conservation_gap).all())


def test_class_heatmaps_are_cached(quick, tmp_cache, monkeypatch):
    first = compute(quick)
    path = heatmaps_path(MODEL_FILE, TARGET, RULES["composite"])
    assert [p.name for p in tmp_cache.iterdir() if not p.name.startswith("durations-")] == [path.name]  # and this CPU's durations
    monkeypatch.setattr(heatmaps_module, "explain", refuse_to_explain)
    assert_same(compute(quick), first)


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-1000])


def _flip_byte(path):
    raw = bytearray(path.read_bytes())
    raw[-7] ^= 0x10
    path.write_bytes(bytes(raw))


def _foreign(path):
    """A whole, valid artifact that does not hold heatmaps."""
    save_artifact(path, {"weight": torch.zeros(3)}, {"seconds": 1.0})


@pytest.mark.parametrize("damage", [_truncate, _flip_byte, _foreign])
def test_damaged_heatmaps_are_recomputed(quick, tmp_cache, monkeypatch, damage):
    first = compute(quick)
    path = heatmaps_path(MODEL_FILE, TARGET, RULES["composite"])
    damage(path)
    calls = []

    def counting_explain(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    original = heatmaps_module.explain
    monkeypatch.setattr(heatmaps_module, "explain", counting_explain)
    again = compute(quick)
    assert calls == [1]
    for field in TENSOR_FIELDS:
        assert torch.equal(getattr(again, field), getattr(first, field)), field
    tensors, _ = load_artifact(path)  # stored whole again
    assert torch.equal(tensors["heatmaps"], first.heatmaps)
    monkeypatch.setattr(heatmaps_module, "explain", refuse_to_explain)
    assert_same(compute(quick), again)


def test_each_rule_and_class_has_its_own_artifact(quick, tmp_cache):
    configs = [
        (TARGET, RULES["composite"]), (TARGET, RULES["epsilon-0.25"]), (TARGET, RULES["composite-eps1e-9"]),
        (TARGET, LRPConfig("composite", gamma=0.5)), (TARGET, LRPConfig(target="prediction")), (2, RULES["composite"]),
    ]
    paths = {heatmaps_path(MODEL_FILE, c, config) for c, config in configs}
    paths.add(heatmaps_path("model-other.safetensors", TARGET, RULES["composite"]))
    assert len(paths) == len(configs) + 1
    assert heatmaps_path(MODEL_FILE, TARGET, LRPConfig("epsilon", epsilon=0.25)) == heatmaps_path(MODEL_FILE, TARGET, LRPConfig("epsilon"))

    composite = compute(quick)
    epsilon = compute(quick, RULES["epsilon-0.25"])
    two = compute(quick, class_id=2)
    assert len(list(tmp_cache.glob("heatmaps-*.safetensors"))) == 3
    assert not torch.equal(composite.heatmaps, epsilon.heatmaps)
    assert torch.equal(composite.indices, epsilon.indices)
    assert two.class_id == 2 and not bool(two.poison_mask.any()), "poisoned images left class 2"


def test_prediction_target_explains_the_predicted_class(quick):
    model, train = quick
    config = LRPConfig(target="prediction")
    result = compute(quick, config, use_cache=False)
    predicted = predict(model, train.images[result.indices])
    assert torch.equal(result.explained, predicted)
    assert bool((predicted != TARGET).any()), "some class-5 images are predicted otherwise, so this is a real test"
    expected, _ = explain(model, train.images[result.indices], predicted, config)
    assert torch.equal(result.heatmaps, expected)
    labelled = compute(quick, use_cache=False)
    differs = predicted != TARGET
    assert not torch.allclose(result.heatmaps[differs], labelled.heatmaps[differs])
    assert torch.allclose(result.heatmaps[~differs], labelled.heatmaps[~differs], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("class_id", [43, -1, 2.5, True, "5"])
def test_bad_class_is_a_config_error(quick, tmp_cache, monkeypatch, class_id):
    monkeypatch.setattr(heatmaps_module, "explain", refuse_to_explain)
    with pytest.raises(ConfigError, match="class must be in 0"):
        compute(quick, class_id=class_id)
    assert not any(tmp_cache.iterdir())


def test_bad_class_fails_before_training(monkeypatch):
    import core.data
    import core.experiment

    def refuse(*args, **kwargs):
        raise AssertionError("loaded data or trained before validating the class")

    monkeypatch.setattr(core.experiment, "train_or_load", refuse)
    monkeypatch.setattr(core.data, "load_gtsrb", refuse)
    with pytest.raises(ConfigError, match="class must be in 0"):
        experiment_heatmaps(ExperimentConfig(), 43, LRPConfig())


# --- the signal --------------------------------------------------------------------------------


@pytest.mark.slow
def test_poisoned_samples_look_at_the_sticker(gtsrb):
    """With the default model, the composite rule puts far more positive relevance into the
    sticker window for poisoned class-5 samples than for clean ones (~0.30 versus ~0.08).
    The model comes from the shared cache; on a fresh clone it is trained once (~3 minutes)."""
    config = ExperimentConfig()
    trained = train_or_load(config, gtsrb)
    train = poisoned_data(gtsrb, config).train
    result = class_heatmaps(trained.model, trained.path.name, train.images, train.labels, train.poison_mask,
                            TARGET, LRPConfig("composite"), use_cache=False)
    assert len(result) == 2463 and int(result.poison_mask.sum()) == 813
    window = sticker_window(config.poison)
    positive = result.heatmaps.double().clamp(min=0)
    share = (positive * window).flatten(1).sum(1) / positive.flatten(1).sum(1)
    poisoned, clean = float(share[result.poison_mask].mean()), float(share[~result.poison_mask].mean())
    assert poisoned > 0.2 and clean < 0.15 and poisoned > 2.5 * clean, (poisoned, clean)
    assert float(window.double().mean()) < 0.02, "the window is a tiny part of the image"

    summary = result.summary(window, 0.99)
    assert summary["window_positive_share_poisoned"] == pytest.approx(poisoned, abs=1e-5)
    assert summary["window_positive_share_clean"] == pytest.approx(clean, abs=1e-5)
    assert summary["window_mass_share_poisoned"] > 2 * summary["window_mass_share_clean"]
    assert (summary["count"], summary["poisoned"], summary["clean"]) == (2463, 813, 1650)
