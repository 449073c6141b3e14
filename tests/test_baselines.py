"""The standard poison detectors (core/baselines.py) on a really trained network and the real
class 5 of the default attack: the activations they read, their flags and scores, and the
spectral-signature score recomputed independently."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from core.baselines import activation_clustering, penultimate_activations, raw_image_clustering, spectral_signatures
from core.detection import score_detection
from core.experiment import ExperimentConfig, poisoned_data, train_or_load
from core.models import ThesisNet
from core.poison import PoisonConfig
from core.train import TrainConfig

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

# A few seconds of training: the activations only need to come from a trained network.
TINY = ExperimentConfig(train=TrainConfig(subset=2000, max_epochs=1, batch_size=128, augment=False))
TARGET = PoisonConfig().target


@pytest.fixture(scope="module")
def tiny(gtsrb):
    """The trained model (not cached), class 5's uint8 images and their poison truth."""
    model = train_or_load(TINY, gtsrb, use_cache=False).model.eval()
    train = poisoned_data(gtsrb, TINY).train
    index = (train.labels == TARGET).nonzero().flatten()
    images, truth = train.images[index], train.poison_mask[index].numpy()
    assert images.dtype == torch.uint8 and len(images) > 80 and 10 < truth.sum() < len(truth) / 2
    return model, images, truth


@pytest.fixture(scope="module")
def activations(tiny):
    model, images, _ = tiny
    return penultimate_activations(model, images)


def manual_penultimate(model: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Run the named layers one by one and stop after relu5 (eval mode, no gradients)."""
    with torch.no_grad():
        for name, layer in model.named_children():
            x = layer(x)
            if name == "relu5":
                return x
    raise AssertionError("no relu5")


# --- penultimate activations ---------------------------------------------------------------------


def test_penultimate_activations_are_relu5_of_a_manual_forward(tiny, activations):
    model, images, _ = tiny
    assert model.penultimate == "relu5"
    assert activations.shape == (len(images), 128) and activations.dtype == np.float64
    assert np.isfinite(activations).all() and activations.min() >= 0.0, "after a ReLU"
    assert (activations > 0).mean() > 0.05, "not dead"
    expected = manual_penultimate(model, images.float() / 255.0).double().numpy()
    assert np.allclose(activations, expected, rtol=1e-5, atol=1e-6)
    # the layer after relu5 is what the logits are computed from
    with torch.no_grad():
        logits = model(images.float() / 255.0).double()
        from_activations = model.fc3(torch.from_numpy(activations).float()).double()
    assert torch.allclose(logits, from_activations, atol=1e-4)


def test_penultimate_activations_do_not_depend_on_batching_or_input_type(tiny, activations):
    model, images, _ = tiny
    assert np.allclose(penultimate_activations(model, images, batch_size=37), activations, rtol=1e-5, atol=1e-6)
    assert np.allclose(penultimate_activations(model, images.float() / 255.0), activations, rtol=1e-5, atol=1e-6)


def test_penultimate_activations_leave_the_model_as_it_was(tiny):
    """The head shares the model's layers; putting it in eval mode must not change the model."""
    model, images, _ = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    try:
        penultimate_activations(model, images[:16])
        assert all(m.training for m in model.modules()), [n for n, m in model.named_modules() if not m.training]
    finally:
        model.eval()
    penultimate_activations(model, images[:16])
    assert not any(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "BatchNorm statistics untouched"


def test_a_network_without_a_named_penultimate_layer_is_rejected():
    with pytest.raises(ValueError, match="penultimate"):
        penultimate_activations(nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 4)), torch.zeros(2, 3, 32, 32))
    assert ThesisNet.penultimate in dict(ThesisNet().named_children())


# --- the three detectors ------------------------------------------------------------------------


def run_method(name, tiny, activations, seed):
    _, images, _ = tiny
    if name == "activation clustering":
        return activation_clustering(activations, seed)
    if name == "spectral signatures":
        return spectral_signatures(activations, seed)
    return raw_image_clustering(images, seed)


METHODS = ["activation clustering", "spectral signatures", "raw images"]


@pytest.mark.parametrize("name", METHODS)
def test_detectors_return_flags_and_finite_scores(name, tiny, activations):
    _, images, truth = tiny
    flags, score = run_method(name, tiny, activations, seed=0)
    assert flags.dtype == bool and flags.shape == (len(images),)
    assert score.shape == (len(images),) and np.isfinite(score).all()
    assert 0 < flags.sum() < len(flags)
    assert score[flags].mean() > score[~flags].mean(), "higher score = more suspicious = flagged"
    result = score_detection(truth, flags, score)
    assert result.tn + result.fp + result.fn + result.tp == len(images) and 0.0 <= result.auc <= 1.0


@pytest.mark.parametrize("name", METHODS)
def test_detectors_are_deterministic_per_seed(name, tiny, activations):
    flags, score = run_method(name, tiny, activations, seed=3)
    again_flags, again_score = run_method(name, tiny, activations, seed=3)
    assert np.array_equal(flags, again_flags) and np.array_equal(score, again_score)


@pytest.mark.parametrize("name", ["activation clustering", "raw images"])
def test_clustering_detectors_flag_the_smaller_cluster(name, tiny, activations):
    flags, _ = run_method(name, tiny, activations, seed=0)
    assert flags.sum() <= len(flags) / 2


def test_spectral_signature_is_the_squared_projection_on_the_top_singular_vector(activations):
    """Recomputed from the covariance's top eigenvector instead of an SVD (the sign cancels)."""
    centred = activations - activations.mean(axis=0, keepdims=True)
    values, vectors = np.linalg.eigh(centred.T @ centred)
    top = vectors[:, np.argmax(values)]
    assert values.max() > 1.5 * np.sort(values)[-2], "a clear top direction, so the vector is well defined"
    expected = (centred @ top) ** 2
    flags, score = spectral_signatures(activations, seed=0)
    assert np.allclose(score, expected, rtol=1e-8, atol=1e-10 * expected.max())
    # 2-means on a line is a threshold: every flagged score is above every unflagged one
    assert score[flags].min() > score[~flags].max()


def test_balanced_clusters_still_score_the_flagged_one_higher():
    """On a tie, the flagged cluster (the lower id) must not be scored by its own centre."""
    black = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    white = torch.full((4, 3, 32, 32), 255, dtype=torch.uint8)
    images = torch.cat([black, white])
    images[::3, 0, 0, 0] = 7  # a little spread within each group
    flags, score = raw_image_clustering(images, seed=0)
    assert flags.sum() == 4 and (flags[:4].all() or flags[4:].all())
    assert score[flags].min() > score[~flags].max()


def test_activation_clustering_survives_dead_units(activations):
    """A briefly trained network may leave most ReLU units dead: with 3 live units (fewer than
    the 10 ICA components asked for) it still flags the smaller cluster; with none it still
    answers (one flag and a finite score per sample) instead of failing inside ICA."""
    few = np.zeros_like(activations)
    few[:, :3] = activations[:, :3] + np.linspace(0, 1, len(activations))[:, None]
    for features in (few, np.zeros_like(activations)):
        flagged, score = activation_clustering(features)
        assert flagged.shape == (len(features),) and np.isfinite(score).all()
    flagged, _ = activation_clustering(few)
    assert 0 < flagged.sum() <= len(few) / 2
