"""Evasion attacks on a classifier, from the adversarial-robustness-toolbox (ART).

The barycentric defense paper attacks its models with Foolbox's FGSM, PGD (L∞ and L2),
Carlini–Wagner L2, DeepFool and AutoAttack at ε = 8/255 (L∞) and 0.5 (L2) on CIFAR-10, and
gives no steps or step sizes. We use ART's implementations with Foolbox's default step
rules where they exist (PGD L∞: 40 steps of ε/30; PGD L2: 50 steps of ε/40). CW and DeepFool
look for the smallest perturbation; as Foolbox's "clipped" output, their results are
projected onto the ε-ball, so every attack here has the same budget. The paper's DeepFool is
Foolbox's LinfDeepFool; ART has only the L2 attack, so `deepfool` below is DeepFool in the L∞
norm (Moosavi-Dezfooli et al. 2016, section 3.3; Foolbox's settings: the 10 most likely
classes as candidates, overshoot 0.02, at most 50 steps). Its L2 form is checked against
ART's DeepFool in the tests. CW runs 5 binary-search
steps of 50 iterations (Foolbox's 9 × 10,000 would take hours per thousand images on a CPU).
AutoAttack is ART's ensemble with its default members, at the L∞ budget.

The adaptive attack ("bpda") knows the defense: PGD L∞ with the same steps as "pgd-linf",
whose forward pass classifies the barycenter of the current image and whose backward pass
treats the barycenter as the identity (BPDA, Athalye et al. 2018). The barycenter is nearly
the identity for small perturbations, so this gradient is the one the defended model would
have; differentiating through 300 unrolled iterations instead costs 300 times the memory.
The random start and the steps are seeded, and the result keeps the best-so-far point:
the last iterate that the defended model misclassifies, if any.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from .device import compute_device, model_on
from .errors import ConfigError
from .progress import ProgressCallback, report
from .validation import real_number, whole_number

ATTACKS = {
    "fgsm": "FGSM (L∞)",
    "pgd-linf": "PGD L∞",
    "pgd-l2": "PGD L2",
    "cw-l2": "Carlini–Wagner L2",
    "deepfool-linf": "DeepFool L∞",
    "autoattack": "AutoAttack (L∞)",
    "bpda": "BPDA PGD L∞ (adaptive)",
}
L2_ATTACKS = {"pgd-l2", "cw-l2"}
DEFAULT_BUDGET = {"linf": 8 / 255, "l2": 0.5}


@dataclass(frozen=True)
class AttackConfig:
    """An attack and its budget (None: 8/255 for L∞ attacks, 0.5 for L2 attacks)."""

    name: str = "pgd-linf"
    eps: Optional[float] = None
    seed: int = 0
    batch_size: int = 128

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or self.name not in ATTACKS:
            raise ConfigError(f"unknown attack {self.name!r}; choose one of {', '.join(ATTACKS)}")
        if self.eps is not None:
            real_number("eps", self.eps, 0.0, 32.0, open_low=True)
        for name, low, high in (("seed", 0, 2**32 - 1), ("batch_size", 1, 4096)):
            whole_number(name, getattr(self, name), low, high)

    @property
    def norm(self) -> str:
        return "l2" if self.name in L2_ATTACKS else "linf"

    @property
    def budget(self) -> float:
        return float(self.eps) if self.eps is not None else DEFAULT_BUDGET[self.norm]


def _classifier(model: nn.Module, num_classes: int):
    """ART's estimator on `compute_device()` (ART moves the model it is given: a GPU gets a copy; its
    "gpu" is torch's current CUDA device, which `use_device` sets)."""
    from art.estimators.classification import PyTorchClassifier

    device = compute_device()
    return PyTorchClassifier(model=model_on(model, device), loss=nn.CrossEntropyLoss(), input_shape=(3, 32, 32),
                             nb_classes=num_classes, clip_values=(0.0, 1.0), device_type="gpu" if device.type == "cuda" else "cpu")


GRADIENT_CALLS = {"fgsm": 1, "pgd-linf": 40, "pgd-l2": 50, "cw-l2": 2 * 5 * 50}
"""Gradient calls per batch of each library attack (C&W: two class gradients per iteration, 5 binary
search steps of at most 50 iterations; it may stop early). AutoAttack's count depends on its runs."""


def _count_gradients(classifier, tick: Callable[[], None]) -> None:
    """Call `tick` before every gradient the attack asks of `classifier`: the library attacks
    report no progress of their own, and their gradient calls are their steps."""
    for name in ("class_gradient", "loss_gradient"):
        original = getattr(classifier, name)

        def counted(*args, _original=original, **kwargs):
            tick()
            return _original(*args, **kwargs)

        setattr(classifier, name, counted)


def _make_attack(classifier, config: AttackConfig):
    from art.attacks.evasion import AutoAttack, CarliniL2Method, FastGradientMethod, ProjectedGradientDescent

    eps, batch = config.budget, config.batch_size
    if config.name == "fgsm":
        return FastGradientMethod(classifier, norm=np.inf, eps=eps, batch_size=batch)
    if config.name == "pgd-linf":
        return ProjectedGradientDescent(classifier, norm=np.inf, eps=eps, eps_step=eps / 30, max_iter=40,
                                        num_random_init=1, batch_size=batch, verbose=False)
    if config.name == "pgd-l2":
        return ProjectedGradientDescent(classifier, norm=2, eps=eps, eps_step=eps / 40, max_iter=50,
                                        num_random_init=1, batch_size=batch, verbose=False)
    if config.name == "cw-l2":
        return CarliniL2Method(classifier, confidence=0.0, learning_rate=0.01, binary_search_steps=5, max_iter=50,
                               initial_const=0.01, batch_size=batch, verbose=False)
    return AutoAttack(classifier, norm=np.inf, eps=eps, eps_step=eps / 4, batch_size=batch)


def attack_step(architecture: str, config: AttackConfig) -> str:
    """The name under which an attack's duration per image is measured (core.durations)."""
    return f"attack {config.name} {architecture}"


def project(original: torch.Tensor, adversarial: torch.Tensor, norm: str, eps: float) -> torch.Tensor:
    """The adversarial images moved back into the ε-ball around the originals and [0, 1]."""
    delta = adversarial - original
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        length = delta.flatten(1).norm(dim=1).clamp(min=1e-12)
        delta = delta * (eps / length).clamp(max=1.0)[:, None, None, None]
    return (original + delta).clamp(0.0, 1.0)


def deepfool(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, norm: str = "linf", steps: int = 50,
             candidates: int = 10, overshoot: float = 0.02, progress: Optional[ProgressCallback] = None) -> torch.Tensor:
    """DeepFool: step to the nearest linearised decision boundary among the `candidates` most
    likely classes, in the L∞ norm (steps along sign(w), length |f|/‖w‖₁) or L2 (along w,
    length |f|/‖w‖₂); the accumulated step is scaled by 1 + overshoot. Images stop once misclassified."""
    original = images.detach().float()
    with torch.no_grad():
        first = model(original)
    ranked = first.argsort(dim=1, descending=True)
    others = torch.stack([row[row != label][: candidates - 1] for row, label in zip(ranked, labels)])  # (B, c − 1)
    total = torch.zeros_like(original)
    current = original.clone()
    for step_index in range(steps):
        current.requires_grad_(True)
        logits = model(current)
        active = logits.argmax(dim=1) == labels
        if not bool(active.any()):
            break
        report(progress, "attack", step_index, steps, f"DeepFool: step {step_index + 1} of at most {steps}, {int(active.sum())} images still correct")
        differences = logits.gather(1, others) - logits.gather(1, labels[:, None])  # f_k − f_label, negative while correct
        grads = torch.stack([torch.autograd.grad(differences[:, k].sum(), current, retain_graph=k < others.shape[1] - 1)[0]
                             for k in range(others.shape[1])], dim=1)  # (B, c − 1, C, H, W)
        flat = grads.flatten(2)
        dual = flat.abs().sum(-1) if norm == "linf" else flat.norm(dim=-1)
        distance = differences.detach().abs() / (dual + 1e-8)
        best = distance.argmin(dim=1)
        w = grads[torch.arange(len(best), device=best.device), best]
        length = (distance.gather(1, best[:, None])[:, 0] + 1e-4)[:, None, None, None]
        if norm == "linf":
            step = length * w.sign()
        else:
            step = length * w / (w.flatten(1).norm(dim=1)[:, None, None, None] + 1e-8)
        total = total + step * active[:, None, None, None]
        current = torch.where(active[:, None, None, None], (original + (1 + overshoot) * total).clamp(0.0, 1.0), current.detach()).detach()
    return current.detach()


def bpda(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: AttackConfig, defense,
         progress: Optional[ProgressCallback] = None) -> torch.Tensor:
    """PGD L∞ against model ∘ purify, with the identity as purify's backward pass."""
    from .defense import purify

    eps = config.budget
    step = eps / 30
    generator = torch.Generator().manual_seed(config.seed)
    original = images.detach().float()
    noise = ((torch.rand(original.shape, generator=generator) * 2 - 1) * eps).to(original.device)  # the same draws on every device
    current = (original + noise).clamp(0.0, 1.0)
    best = original.clone()
    fooled = torch.zeros(len(original), dtype=torch.bool, device=original.device)
    for step_index in range(40):
        report(progress, "attack", step_index, 40, f"BPDA: step {step_index + 1} of 40 through the defense")
        with torch.no_grad():
            cleaned = purify(current, defense)
        cleaned.requires_grad_(True)
        logits = model(cleaned)
        loss = nn.functional.cross_entropy(logits, labels, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, cleaned)
        wrong = logits.detach().argmax(dim=1) != labels
        best[wrong] = current[wrong]
        fooled |= wrong
        current = current + step * gradient.sign()
        current = (original + (current - original).clamp(-eps, eps)).clamp(0.0, 1.0).detach()
    with torch.no_grad():
        wrong = model(purify(current, defense)).argmax(dim=1) != labels
    best[wrong] = current[wrong]
    fooled |= wrong
    return torch.where(fooled[:, None, None, None], best, current)


def attack(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: AttackConfig = AttackConfig(),
           num_classes: int = 43, defense=None, progress: Optional[ProgressCallback] = None) -> torch.Tensor:
    """Adversarial versions of float images in [0, 1] (B, 3, 32, 32) against `model` (logits),
    untargeted, within the config's budget. The adaptive attack needs the `defense`
    (a DefenseConfig) it attacks. `progress` hears of every gradient step."""
    if not isinstance(config, AttackConfig):
        raise ConfigError("config must be an AttackConfig")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != (3, 32, 32):
        raise ConfigError("images must be a (B, 3, 32, 32) tensor")
    if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise ConfigError("images must hold finite values in [0, 1]")
    if labels.shape != (len(images),):
        raise ConfigError(f"labels must have one entry per image ({len(images)}), got shape {tuple(labels.shape)}")
    if config.name == "bpda":
        from .defense import DefenseConfig

        if not isinstance(defense, DefenseConfig):
            raise ConfigError("the adaptive attack (bpda) needs the defense it attacks: pass defense=DefenseConfig(...)")
    was_training = model.training
    model.eval()
    np.random.seed(config.seed)  # ART draws random starts from numpy's global generator
    torch.manual_seed(config.seed)
    hooks = []
    try:
        if config.name in ("bpda", "deepfool-linf"):  # ours: on compute_device(), answered on the CPU
            device = compute_device()
            runner, on_device, targets = model_on(model, device), images.to(device), labels.to(device)
            found = (bpda(runner, on_device, targets, config, defense, progress) if config.name == "bpda"
                     else deepfool(runner, on_device, targets, "linf", progress=progress))
            return project(images.float(), found.cpu(), config.norm, config.budget)
        classifier = _classifier(model, num_classes)
        if progress is not None:
            batches = -(-len(images) // config.batch_size)
            total = GRADIENT_CALLS.get(config.name, 0) * batches
            steps = [0]

            def tick() -> None:
                steps[0] += 1
                what = f"gradient step {steps[0]} of at most {total}" if total else f"network pass {steps[0]}"
                report(progress, "attack", min(steps[0], total), total, f"{ATTACKS[config.name]}: {what}")

            if config.name == "autoattack":  # it runs copies of the classifier: count the network's passes instead,
                last = [m for m in classifier.model.modules() if not list(m.children())][-1]  # at its output layer (the library
                hooks.append(last.register_forward_hook(lambda *_: tick()))  # calls a Sequential's layers one by one)
            else:
                _count_gradients(classifier, tick)
        x = images.detach().float().numpy()
        y = np.eye(num_classes, dtype=np.float32)[labels.numpy()]
        adversarial = torch.from_numpy(_make_attack(classifier, config).generate(x=x, y=y)).float()
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return project(images.float(), adversarial, config.norm, config.budget)
