"""LRP on a really trained network: BatchNorm folding, our rules against captum's, conservation,
and the rule configuration.

Comparisons with captum and conservation checks run in float64: in float32 a max-pool
window whose two largest inputs differ by ~1e-7 can route relevance differently in the two
implementations, and logits near zero turn rounding into large relative errors
(.scratch/lrp_research.md, sections 5 and 6).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from core.errors import ConfigError
from core.lrp import LRP, LRPConfig, canonical_copy, explain, without_biases
from core.lrp_reference import captum_relevance
from core.poison import PoisonConfig

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")

TARGET = PoisonConfig().target

RULES = {
    "composite": LRPConfig("composite"),
    "composite-eps1e-9": LRPConfig("composite", epsilon=1e-9),
    "epsilon-1e-9": LRPConfig("epsilon", epsilon=1e-9),
    "epsilon-0.25": LRPConfig("epsilon", epsilon=0.25),
    "gamma-0.25": LRPConfig("gamma", gamma=0.25),
    "alpha1beta0": LRPConfig("alpha1beta0"),
}
CONSERVATIVE = ["epsilon-1e-9", "gamma-0.25", "alpha1beta0", "composite-eps1e-9"]


def relative_l2(ours: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """||ours - reference|| / ||reference|| per heatmap."""
    return (ours - reference).flatten(1).norm(dim=1) / reference.flatten(1).norm(dim=1)


def state_copy(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def batch(quick):
    """128 real class-5 images (poisoned and clean) and 64 images of other classes, with their labels."""
    _, train = quick
    five = torch.nonzero(train.labels == TARGET).flatten()
    poisoned, clean = five[train.poison_mask[five]], five[~train.poison_mask[five]]
    assert len(poisoned) >= 32 and len(clean) >= 64
    picked_five = torch.cat([poisoned[:64], clean[: 128 - min(64, len(poisoned))]])
    others = torch.nonzero(train.labels != TARGET).flatten()
    picked_others = others[torch.linspace(0, len(others) - 1, 64).long()]
    index = torch.cat([picked_five, picked_others])
    labels = train.labels[index]
    assert len(picked_five) == 128 and len(set(labels.tolist())) > 20
    return {
        "index": index,
        "uint8": train.images[index],
        "x64": train.images[index].double() / 255,
        "x32": train.images[index].float() / 255,
        "labels": labels,
        "five": slice(0, 128),
        "poisoned": train.poison_mask[index],
    }


@pytest.fixture(scope="module")
def canon64(quick):
    model, _ = quick
    return canonical_copy(copy.deepcopy(model).double())


@pytest.fixture(scope="module")
def canon32(quick):
    model, _ = quick
    return canonical_copy(model)


# --- canonicalisation ------------------------------------------------------------------------


def test_canonical_copy_computes_the_same_function(quick, canon64, batch):
    model, _ = quick
    model64 = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        expected = model64(batch["x64"])
        folded = canon64(batch["x64"])
        unfolded = nn.Sequential(*[m for m in model64 if not isinstance(m, nn.modules.batchnorm._BatchNorm)])(batch["x64"])
    assert folded.dtype == torch.float64
    assert (folded - expected).abs().max() <= 1e-10
    assert (unfolded - expected).abs().max() > 1.0, "the BatchNorms matter, so this checks the folding"
    assert torch.equal(folded.argmax(1), expected.argmax(1))


def test_canonical_copy_has_no_batchnorm_and_keeps_every_layer(quick, canon32):
    model, _ = quick
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in canon32.modules())
    layers = [n for n, m in model.named_children() if isinstance(m, (nn.Conv2d, nn.Linear, nn.InstanceNorm2d, nn.MaxPool2d))]
    assert [n for n, m in canon32.named_children() if isinstance(m, (nn.Conv2d, nn.Linear, nn.InstanceNorm2d, nn.MaxPool2d))] == layers
    assert not canon32.training
    assert all(not p.requires_grad for p in canon32.parameters())
    # folding changed the layers before a BatchNorm, and only those
    assert not torch.equal(canon32.conv2.weight, model.conv2.weight) and not torch.equal(canon32.fc1.bias, model.fc1.bias)
    assert torch.equal(canon32.conv3.weight, model.conv3.weight) and torch.equal(canon32.fc3.bias, model.fc3.bias)


def test_canonical_copy_never_modifies_the_model(quick):
    model, _ = quick
    before = state_copy(model)
    types = [(n, type(m)) for n, m in model.named_modules()]
    model.train()
    try:
        canonical = canonical_copy(model)
        assert model.training, "the model keeps its mode"
        with torch.no_grad():
            for parameter in canonical.parameters():  # the copy shares no storage with the model
                parameter.add_(1.0)
    finally:
        model.eval()
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [(n, type(m)) for n, m in model.named_modules()] == types
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize(
    "network",
    [
        lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)),
        lambda: nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3)),
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.Dropout(), nn.BatchNorm1d(4)),
    ],
    ids=["after-relu", "first", "after-dropout"],
)
def test_batchnorm_that_cannot_be_folded_is_a_config_error(network):
    with pytest.raises(ConfigError, match="does not directly follow"):
        canonical_copy(network())


def test_lrp_needs_a_canonical_sequential_model(quick):
    model, _ = quick
    with pytest.raises(ConfigError, match="canonical_copy"):
        LRP(model, {})
    with pytest.raises(ConfigError, match="Sequential"):
        canonical_copy(nn.ModuleList([nn.Linear(2, 2)]))


# --- our LRP against captum's ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(RULES))
def test_lrp_matches_captum(name, canon32, canon64, batch):
    """Same heatmap per image, with the real (folded) biases and per-sample targets."""
    config = RULES[name]
    labels = batch["labels"]
    assert any(bool(m.bias.abs().max() > 0) for m in canon64 if isinstance(m, (nn.Conv2d, nn.Linear)))

    rules = config.rules_for(canon64)
    ours, logits = LRP(canon64, rules)(batch["x64"], labels)
    theirs = captum_relevance(canon64, rules, batch["x64"], labels)
    assert ours.dtype == theirs.dtype == torch.float64 and ours.shape == batch["x64"].shape
    assert logits.shape == (len(labels), 43)
    assert bool((ours.flatten(1).norm(dim=1) > 0).all())
    error = relative_l2(ours, theirs)
    assert error.max() <= 1e-4, f"{name}: worst image {int(error.argmax())} differs by {float(error.max()):.2e}"

    rules32 = config.rules_for(canon32)
    ours32, _ = LRP(canon32, rules32)(batch["x32"], labels)
    theirs32 = captum_relevance(canon32, rules32, batch["x32"], labels)
    assert ours32.dtype == torch.float32
    # float32 max-pool near-ties may flip a few images; the bulk must agree
    assert relative_l2(ours32.double(), theirs32.double()).median() <= 1e-4


def test_the_captum_comparison_tells_rules_apart(canon64, batch):
    x, labels = batch["x64"], batch["labels"]
    for ours_name, theirs_name in [("epsilon-0.25", "gamma-0.25"), ("composite", "epsilon-0.25"), ("alpha1beta0", "epsilon-1e-9")]:
        ours, _ = LRP(canon64, RULES[ours_name].rules_for(canon64))(x, labels)
        theirs = captum_relevance(canon64, RULES[theirs_name].rules_for(canon64), x, labels)
        assert relative_l2(ours, theirs).median() > 1e-2, (ours_name, theirs_name)


# --- conservation ----------------------------------------------------------------------------


def conservation_gap(model: nn.Module, config: LRPConfig, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    relevance, logits = LRP(model, config.rules_for(model))(x, labels)
    logit = logits.gather(1, labels[:, None])[:, 0]
    return (relevance.sum(dim=(1, 2, 3)) - logit).abs() / logit.abs()


@pytest.fixture(scope="module")
def bias_free64(canon64):
    model = without_biases(canon64)
    assert all(float(m.bias.abs().max()) == 0 for m in model if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert any(float(m.bias.abs().max()) > 0 for m in canon64 if isinstance(m, (nn.Conv2d, nn.Linear))), "copy, not in place"
    return model


@pytest.mark.parametrize("name", CONSERVATIVE)
def test_conservative_rules_conserve_the_logit(name, bias_free64, batch):
    gap = conservation_gap(bias_free64, RULES[name], batch["x64"], batch["labels"])
    assert gap.max() <= 1e-4, f"{name}: image {int(gap.argmax())} loses {float(gap.max()):.2e} of its logit"


def test_epsilon_absorbs_relevance(bias_free64, canon64, batch):
    gap = conservation_gap(bias_free64, RULES["epsilon-0.25"], batch["x64"], batch["labels"])
    assert (gap > 1e-3).double().mean() >= 0.9 and gap.median() > 0.1
    # with the real biases even LRP-0 does not conserve: the biases absorb relevance
    with_biases = conservation_gap(canon64, RULES["epsilon-1e-9"], batch["x64"], batch["labels"])
    assert (with_biases > 1e-3).double().mean() >= 0.5


# --- targets and inputs ----------------------------------------------------------------------


def test_int_and_per_sample_targets_agree(canon32, batch):
    x = batch["x32"][batch["five"]]
    attributor = LRP(canon32, RULES["composite"].rules_for(canon32))
    by_int, logits_int = attributor(x, TARGET)
    by_tensor, logits_tensor = attributor(x, torch.full((len(x),), TARGET, dtype=torch.long))
    assert torch.equal(by_int, by_tensor) and torch.equal(logits_int, logits_tensor)
    assert torch.equal(attributor(x, torch.tensor(TARGET))[0], by_int)
    assert torch.equal(attributor(x, np.int64(TARGET))[0], by_int)
    other, _ = attributor(x, 2)
    assert not torch.allclose(other, by_int)
    for wrong in (torch.full((len(x) - 1,), TARGET), torch.full((len(x), 1), TARGET)):
        with pytest.raises(ConfigError, match="target"):
            attributor(x, wrong)


def test_explain_accepts_uint8_and_float_images(quick, canon32, batch):
    model, _ = quick
    images, labels = batch["uint8"], batch["labels"]
    config = RULES["composite"]
    heatmaps, logits = explain(model, images, labels, config, batch_size=100)
    assert heatmaps.dtype == torch.float32 and heatmaps.shape == (len(images), 32, 32)
    assert logits.shape == (len(images), 43)
    same, same_logits = explain(model, images.float() / 255, labels, config, batch_size=100)
    assert torch.equal(heatmaps, same) and torch.equal(logits, same_logits)
    direct, _ = LRP(canon32, config.rules_for(canon32))(batch["x32"][:100], labels[:100])
    assert torch.allclose(heatmaps[:100], direct.sum(dim=1), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        assert (logits - model(batch["x32"])).abs().max() < 1e-3
    assert not model.training


# --- the rule configuration ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rule": "zplus"}, "unknown LRP rule"),
        ({"rule": ""}, "unknown LRP rule"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"epsilon": math.nan}, "epsilon"),
        ({"epsilon": math.inf}, "epsilon"),
        ({"epsilon": True}, "epsilon"),
        ({"epsilon": "0.1"}, "epsilon"),
        ({"gamma": -0.5}, "gamma"),
        ({"gamma": math.nan}, "gamma"),
        ({"target": "logit"}, "target"),
        ({"target": None}, "target"),
    ],
)
def test_lrp_config_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LRPConfig(**kwargs)


def test_lrp_config_normalises_numbers():
    config = LRPConfig(epsilon=0, gamma=1)
    assert isinstance(config.epsilon, float) and isinstance(config.gamma, float)
    assert config == LRPConfig(epsilon=0.0, gamma=1.0)
