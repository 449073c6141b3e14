"""Evasion attacks (ART) against a small ThesisNet trained on real GTSRB: budgets, effect,
determinism, bad input."""

from __future__ import annotations

import pytest
import torch

from core.defense import DefenseConfig, purify
from core.errors import ConfigError
from core.evasion import ATTACKS, GRADIENT_CALLS, AttackConfig, attack, deepfool, project
from core.models import predict



@pytest.fixture(scope="module")
def victim(small_victim):
    return small_victim


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_stays_within_its_budget_and_fools_the_model(victim, name):
    model, images, labels = victim
    config = AttackConfig(name=name)
    defense = DefenseConfig(iterations=50)
    events = []
    adversarial = attack(model, images[:8], labels[:8], config, defense=defense if name == "bpda" else None, progress=events.append)
    steps = [e for e in events if e.task == "attack"]
    assert steps and all("step" in e.message or "pass" in e.message for e in steps)  # the bar moves with the attack's own steps
    if name in ("fgsm", "pgd-linf", "pgd-l2"):
        assert len(steps) == steps[-1].done == steps[-1].total == GRADIENT_CALLS[name]
    elif name == "cw-l2":
        assert steps[-1].total == GRADIENT_CALLS[name] and 0 < steps[-1].done <= steps[-1].total
    assert adversarial.shape == images[:8].shape and adversarial.min() >= 0 and adversarial.max() <= 1
    delta = (adversarial - images[:8]).flatten(1)
    if config.norm == "linf":
        assert delta.abs().max() <= config.budget + 1e-6
    else:
        assert delta.norm(dim=1).max() <= config.budget + 1e-5
    seen = purify(adversarial, defense) if name == "bpda" else adversarial  # BPDA attacks the defended model
    accuracy = float((predict(model, seen) == labels[:8]).float().mean())
    assert accuracy <= 0.5, f"{name} left {accuracy:.0%} of correctly classified images correct"


def test_attacks_are_reproducible_with_their_seed(victim):
    model, images, labels = victim
    first = attack(model, images, labels, AttackConfig(name="pgd-linf", seed=3), progress=lambda event: None)  # counting changes nothing
    again = attack(model, images, labels, AttackConfig(name="pgd-linf", seed=3))
    other = attack(model, images, labels, AttackConfig(name="pgd-linf", seed=4))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_a_larger_budget_is_stronger(victim):
    model, images, labels = victim
    small = attack(model, images, labels, AttackConfig(name="fgsm", eps=1 / 255))
    large = attack(model, images, labels, AttackConfig(name="fgsm", eps=16 / 255))
    assert (predict(model, large) == labels).sum() < (predict(model, small) == labels).sum()


def test_projection_onto_the_budget():
    x = torch.full((2, 3, 32, 32), 0.5)
    far = x + torch.randn_like(x)
    assert (project(x, far, "linf", 0.1) - x).abs().max() <= 0.1 + 1e-7
    assert (project(x, far, "l2", 0.5) - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-6


@pytest.mark.parametrize("field, value", [("name", "pgd"), ("eps", 0.0), ("eps", float("inf")), ("seed", -1),
                                          ("batch_size", 0), ("eps", True)])
def test_bad_settings_are_refused(field, value):
    with pytest.raises(ConfigError):
        AttackConfig(**{field: value})


def test_bad_images_are_refused(victim):
    model, images, labels = victim
    with pytest.raises(ConfigError):
        attack(model, images * 2, labels)
    with pytest.raises(ConfigError):
        attack(model, images[:, :1], labels)
    with pytest.raises(ConfigError):
        attack(model, images, labels[:3])


def test_the_adaptive_attack_beats_the_defense_where_a_minimal_attack_does_not(victim):
    """CW's minimal perturbations are undone by the barycenter; BPDA, which attacks through
    it, is not, and the same seed gives the same images."""
    model, images, labels = victim
    defense = DefenseConfig(iterations=50)
    cw = attack(model, images, labels, AttackConfig(name="cw-l2"))
    adaptive = attack(model, images, labels, AttackConfig(name="bpda", seed=1), defense=defense)
    defended_cw = (predict(model, purify(cw, defense)) == labels).float().mean()
    defended_bpda = (predict(model, purify(adaptive, defense)) == labels).float().mean()
    assert defended_bpda <= 0.25 < defended_cw, (float(defended_bpda), float(defended_cw))
    assert torch.equal(adaptive, attack(model, images, labels, AttackConfig(name="bpda", seed=1), defense=defense))
    with pytest.raises(ConfigError, match="needs the defense"):
        attack(model, images, labels, AttackConfig(name="bpda"))


def test_deepfool_in_l2_matches_arts_deepfool_and_linf_finds_small_linf_steps(victim):
    """Our DeepFool's L2 form against ART's DeepFool (the same algorithm): both fool every image,
    with perturbations of about the same size. The L∞ form needs far smaller L∞ steps than the
    L2 attack does (what ART's attack, cut back to an L∞ budget, missed)."""
    import numpy as np
    from art.attacks.evasion import DeepFool

    from core.evasion import _classifier

    model, images, labels = victim
    ours = deepfool(model, images, labels, "l2")
    art = DeepFool(_classifier(model, 43), max_iter=50, epsilon=0.02, nb_grads=10, verbose=False)
    theirs = torch.from_numpy(art.generate(x=images.numpy())).float()
    assert bool((predict(model, ours) != labels).all()) and bool((predict(model, theirs) != labels).all())
    ours_l2 = (ours - images).flatten(1).norm(dim=1)
    theirs_l2 = (theirs - images).flatten(1).norm(dim=1)
    ratio = float(ours_l2.median() / theirs_l2.median())
    assert 0.8 < ratio < 1.25, ratio
    assert np.corrcoef(ours_l2.numpy(), theirs_l2.numpy())[0, 1] > 0.8  # the same images are hard for both
    linf = deepfool(model, images, labels, "linf")
    assert bool((predict(model, linf) != labels).all())
    assert float((linf - images).flatten(1).abs().amax(1).median()) < 0.7 * float((ours - images).flatten(1).abs().amax(1).median())
