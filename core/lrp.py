"""Layer-wise relevance propagation (LRP): the relevance of a batch of images in one backward pass.

Concepts, each small and independent (after Zennit):

* a **rule** is data (`Epsilon`, `Gamma`, `Alpha1Beta0`, `ZBox`) saying how a Conv2d or
  Linear layer redistributes relevance: R_in = a * W'^T (R_out / stab(z')), with
  z' = a W' + b' the rule's modified pre-activation and stab(z) = z + eps * sign(z);
* a **rule set** (`LRPConfig.rules_for`) maps layer names to rules: one rule everywhere,
  or the composite of current practice (z^B on the first layer, gamma on convolutions,
  epsilon on dense layers; Montavon et al. 2019, "Layer-wise relevance propagation: an
  overview");
* **canonicalisation** (`canonical_copy`) folds every BatchNorm into the layer before it
  (Linear/Conv2d with W' = W * g / sqrt(var + e), b' = (b - mean) * g / sqrt(var + e) + beta),
  on a copy: the trained model is never modified;
* the **attributor** (`LRP`) runs the canonical copy once forward and once backward.

Each Conv2d/Linear runs as one autograd Function whose forward returns the true output y
and whose backward applies the rule, so autograd's single backward pass yields the
relevance ("LRP as modified gradient"). That keeps every rule within about 1.4x of
gradient x input, where captum's hook-based `LRP` takes 2.3-2.8x;
`core.lrp_reference.captum_relevance` runs captum on the same rules and tests hold both
to the same heatmaps.

InstanceNorm (per-image statistics, cannot be folded) is propagated as the linear map
y = (x - mean(x)) * stopgrad(1/std): centring is a bias-free linear map, so relevance is
conserved through it; letting the gradient flow through std makes the layer scale
invariant and sends the total relevance to zero (Euler's theorem), treating the mean
as a constant turns it into a bias. Freezing the std follows Ali et al. 2022,
"XAI for Transformers: Better Explanations through Conservative Propagation".
"""

from __future__ import annotations

import copy
import numbers
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from .data import NUM_CLASSES
from .errors import ConfigError
from .params import NAME, REAL, SWITCH, check_declared, parameter
from .progress import ProgressCallback, report

RULE_NAMES = ("composite", "epsilon", "gamma", "alpha1beta0", "squared")
# where relevance can be read: the input, or the output of a named layer (summed over its channels)
INPUT = "input"


# ------------------------------------------------------------------ rules (data)


@dataclass(frozen=True)
class Epsilon:
    """LRP-eps: z' = z; eps absorbs weak or contradictory relevance (eps -> 0 is LRP-0)."""

    eps: float = 1e-9


@dataclass(frozen=True)
class Gamma:
    """LRP-gamma: W' = W + gamma * W+ favours positive contributions; bias unchanged (as captum)."""

    gamma: float = 0.25
    eps: float = 1e-9


@dataclass(frozen=True)
class Alpha1Beta0:
    """LRP-alpha1beta0: W' = W+, only positive contributions; bias unchanged (as captum)."""

    eps: float = 1e-9


@dataclass(frozen=True)
class ZBox:
    """z^B for the first layer with inputs bounded in [low, high]: z' = z - l W+ - h W-."""

    low: float = 0.0
    high: float = 1.0
    eps: float = 1e-9


@dataclass(frozen=True)
class Squared:
    """The thesis's rule (its code: `lrp_exponent=2`, `e-rule`): z' = x^2 W^2 without bias, so every
    contribution is non-negative and a positive logit leaves only non-negative relevance."""

    eps: float = 1e-6


Rule = Union[Epsilon, Gamma, Alpha1Beta0, ZBox, Squared]


@dataclass(frozen=True)
class LRPConfig:
    """Which rules explain the model, and which logit they explain."""

    rule: str = parameter("composite", NAME, "--rule", label="LRP rule", choices=RULE_NAMES,
                          help="composite: z^B first layer, gamma convolutions, epsilon dense layers")
    epsilon: float = parameter(0.25, REAL, "--epsilon", label="ε", help="epsilon of the epsilon rule (the composite's dense layers)",
                               low=0.0, high=100.0)
    gamma: float = parameter(0.25, REAL, "--gamma", label="γ", help="gamma of the gamma rule (the composite's convolutions)",
                             low=0.0, high=100.0)
    target: str = parameter("label", NAME, "--explain", label="explained logit", choices=("label", "prediction"),
                            help="explain the image's (possibly poisoned) label, as the thesis does, or the predicted class")
    layer: str = parameter(INPUT, NAME, "--relevance-layer", label="relevance read at",
                           help="input, or a layer whose output relevance is summed over its channels and brought to the "
                                "image grid (thesis_net: relu1, relu2; inception_v3: inception, the thesis's choice, or relu2)")
    positive: bool = parameter(False, SWITCH, "--positive", label="positive part only",
                               help="keep only the positive part of each heatmap (negative relevance set to 0)")

    def __post_init__(self) -> None:
        if self.rule not in RULE_NAMES:
            raise ConfigError(f"unknown LRP rule {self.rule!r}; choose one of {', '.join(RULE_NAMES)}")
        if not isinstance(self.layer, str) or not self.layer.replace(".", "").replace("_", "").isalnum():
            raise ConfigError(f"relevance layer must be 'input' or a layer name such as 'inception', got {self.layer!r}")
        check_declared(self)

    def rules_for(self, model: nn.Module) -> Dict[str, Rule]:
        layers = rule_layers(model)
        if self.rule == "squared":
            return {n: Squared() for n in layers}
        if self.rule == "epsilon":
            return {n: Epsilon(self.epsilon) for n in layers}
        if self.rule == "gamma":
            return {n: Gamma(self.gamma) for n in layers}
        if self.rule == "alpha1beta0":
            return {n: Alpha1Beta0() for n in layers}
        rules: Dict[str, Rule] = {}
        modules = dict(model.named_modules())
        reads_input = input_layers(model)
        for name in layers:
            layer = modules[name]
            if name in reads_input:
                rules[name] = ZBox(0.0, 1.0)
            elif isinstance(layer, nn.Conv2d):
                rules[name] = Gamma(self.gamma)
            else:
                rules[name] = Epsilon(self.epsilon)
        return rules

    def describe(self) -> str:
        if self.rule == "composite":
            text = f"composite (z^B first layer, gamma={self.gamma:g} conv, eps={self.epsilon:g} dense)"
        elif self.rule == "epsilon":
            text = f"LRP-eps (eps={self.epsilon:g})"
        elif self.rule == "gamma":
            text = f"LRP-gamma (gamma={self.gamma:g})"
        elif self.rule == "squared":
            text = "squared eps-rule (z = x²w², eps=1e-6, the thesis's code)"
        else:
            text = "LRP-alpha1beta0"
        if self.layer != INPUT:
            text += f", read at {self.layer}"
        return text + (", positive part" if self.positive else "")

    @property
    def short_name(self) -> str:
        """The rule with its readout layer and sign, for file names and chart labels."""
        return self.rule + ("" if self.layer == INPUT else f"@{self.layer}") + ("+" if self.positive else "")


def check_layer_of(architecture: str, layer: str) -> str:
    """`layer` if relevance can be read there in `architecture`'s network (checked before any
    data is loaded or any model trained)."""
    from .models import build_model

    model = build_model(architecture)
    if layer != INPUT and layer not in dict(model.named_modules()):
        offered = ", ".join(getattr(model, "readout_layers", (INPUT,)))
        raise ConfigError(f"the {architecture} network has no layer {layer!r}; read relevance at one of {offered}")
    return layer


def rule_layers(model: nn.Module) -> list:
    """Qualified names of the Conv2d and Linear layers, in module order."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def input_layers(model: nn.Module) -> frozenset:
    """The Conv2d/Linear layers that read the network's input itself (where z^B applies), found by
    one forward pass on a blank image: in a branched network there are several."""
    from .data import IMAGE_SIZE

    found = set()
    weight = next(model.parameters())
    probe = torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE, dtype=weight.dtype, device=weight.device)
    hooks = [m.register_forward_pre_hook(lambda module, args, name=n: found.add(name) if args[0] is probe else None)
             for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(probe)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return frozenset(found)


# ------------------------------------------------------------------ canonicalisation


def canonical_copy(model: nn.Sequential) -> nn.Sequential:
    """An eval-mode copy with every BatchNorm folded into the Conv2d/Linear before it.

    Folding removes the normalisation shift that would otherwise act as an unexplained
    bias; the copy's outputs equal the model's in eval mode (up to rounding). Branches
    (an Inception block's `nn.Sequential`s) are folded the same way.
    """
    if not isinstance(model, nn.Sequential):
        raise ConfigError("LRP needs an nn.Sequential network (one module per operation)")
    folded = _folded(copy.deepcopy(model).eval())
    for weight in folded.parameters():
        weight.requires_grad_(False)
    return folded.eval()


def _folded(module: nn.Module) -> nn.Module:
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        raise ConfigError(f"cannot fold {type(module).__name__}: it does not directly follow a Conv2d or Linear layer")
    if not isinstance(module, nn.Sequential):
        for name, child in list(module.named_children()):
            setattr(module, name, _folded(child))
        return module
    children = list(module.named_children())
    kept: "OrderedDict[str, nn.Module]" = OrderedDict()
    for index, (name, child) in enumerate(children):
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
            previous_name, previous = children[index - 1] if index else (None, None)
            if not isinstance(previous, (nn.Conv2d, nn.Linear)):
                raise ConfigError(f"cannot fold {name}: it does not directly follow a Conv2d or Linear layer")
            _fold(kept[previous_name], child)
            continue
        kept[name] = _folded(child)
    return nn.Sequential(kept)


def _fold(layer: nn.Module, norm: nn.modules.batchnorm._BatchNorm) -> None:
    scale = torch.rsqrt(norm.running_var + norm.eps)
    shift = -norm.running_mean * scale
    if norm.affine:
        scale = scale * norm.weight.detach()
        shift = shift * norm.weight.detach() + norm.bias.detach()
    weight = layer.weight.detach()
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(scale)
    layer.weight = nn.Parameter(weight * scale.reshape((-1,) + (1,) * (weight.dim() - 1)))
    layer.bias = nn.Parameter(bias * scale + shift)


def without_biases(model: nn.Module) -> nn.Module:
    """A copy whose Conv2d/Linear biases are zero: there LRP must conserve the logit exactly."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
            module.bias.data.zero_()
    return model


# ------------------------------------------------------------------ the attributor


def conv_options(layer: nn.Module) -> dict:
    """The layer's geometry, for the functional calls that apply a rule's modified weights."""
    return dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)


@dataclass(frozen=True, eq=False)
class _Step:
    layer: nn.Module
    weight_mod: Optional[torch.Tensor]
    bias_mod: Optional[torch.Tensor]
    eps: float
    zbox: Optional["_ZBoxTerms"]
    squared: bool
    sink: list  # z^B relevance of the current call, collected beside the gradient (see `LRP`)


@dataclass(frozen=True, eq=False)
class _ZBoxTerms:
    rule: ZBox
    stacked: torch.Tensor  # [W, W+, W-] along the input axis: one transposed product for all three
    bound: Dict[Tuple[int, ...], torch.Tensor]  # l W+ + h W- per input shape (batch independent)

    def bound_output(self, layer: nn.Module, shape: Tuple[int, ...]) -> torch.Tensor:
        key = tuple(shape[1:])
        if key not in self.bound:
            weight = layer.weight.detach()
            low = torch.full((1,) + key, self.rule.low, dtype=weight.dtype, device=weight.device)
            high = torch.full((1,) + key, self.rule.high, dtype=weight.dtype, device=weight.device)
            if isinstance(layer, nn.Conv2d):
                options = conv_options(layer)
                value = F.conv2d(low, weight.clamp(min=0), None, **options) + F.conv2d(high, weight.clamp(max=0), None, **options)
            else:
                value = F.linear(low, weight.clamp(min=0)) + F.linear(high, weight.clamp(max=0))
            self.bound[key] = value
        return self.bound[key]


class _RuleLayer(torch.autograd.Function):
    """Forward: the true output y = layer(a). Backward: a's gradient g_a such that a * g_a is the
    rule's relevance R_a, given the output's gradient g_y = R_y / y. Gradients then add up where
    branches meet, and the relevance of any activation h is h times its gradient. z^B's relevance
    is not of the form a * g_a (it has bound terms), so a z^B layer puts it in `sink` instead."""

    @staticmethod
    def forward(ctx, a, step):
        layer = step.layer
        is_conv = isinstance(layer, nn.Conv2d)
        options = conv_options(layer) if is_conv else {}

        def apply(x, weight, bias):
            return F.conv2d(x, weight, bias, **options) if is_conv else F.linear(x, weight, bias)

        y = apply(a, layer.weight, layer.bias)
        if step.zbox is not None:
            z = y - step.zbox.bound_output(layer, a.shape)
        elif step.squared:
            z = apply(a * a, step.weight_mod, None)
        elif step.weight_mod is not None:
            z = apply(a, step.weight_mod, step.bias_mod)
        else:
            z = y
        stabilised = torch.copysign(torch.full((), step.eps, dtype=z.dtype, device=z.device), z).add_(z)
        ctx.save_for_backward(a, y / stabilised)
        ctx.step, ctx.is_conv, ctx.options = step, is_conv, options
        return y

    @staticmethod
    def backward(ctx, grad):
        a, ratio = ctx.saved_tensors
        step = ctx.step
        s = grad * ratio  # R_y / stab(z')
        if step.zbox is not None:
            stacked = step.zbox.stacked
            if ctx.is_conv:
                back = torch.nn.grad.conv2d_input((a.shape[0], stacked.shape[1]) + tuple(a.shape[2:]), stacked, s, **ctx.options)
            else:
                back = s @ stacked
            c = a.shape[1]
            rule = step.zbox.rule
            step.sink.append(a * back[:, :c] - rule.low * back[:, c : 2 * c] - rule.high * back[:, 2 * c :])
            return torch.zeros_like(a), None
        weight = step.weight_mod if step.weight_mod is not None else step.layer.weight
        back = torch.nn.grad.conv2d_input(a.shape, weight, s, **ctx.options) if ctx.is_conv else s @ weight
        return (a * back if step.squared else back), None


class _RuleModule(nn.Module):
    def __init__(self, step: _Step) -> None:
        super().__init__()
        self.step = step

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return _RuleLayer.apply(a, self.step)


class _CentredInstanceNorm(torch.autograd.Function):
    """y = (x - mean) / std with the std held constant in the backward pass."""

    @staticmethod
    def forward(ctx, x, eps):
        var, mean = torch.var_mean(x, dim=(2, 3), correction=0, keepdim=True)
        inv = torch.rsqrt(var + eps)
        ctx.save_for_backward(inv)
        return (x - mean).mul_(inv)

    @staticmethod
    def backward(ctx, grad):
        (inv,) = ctx.saved_tensors
        return (grad - grad.mean(dim=(2, 3), keepdim=True)).mul_(inv), None


class _InstanceNormModule(nn.Module):
    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _CentredInstanceNorm.apply(x, self.eps)


# relevance passes these unchanged (ReLU, max pooling: winner takes all) or, being linear without
# bias (average pooling), by LRP-0, which is what their plain gradient gives
_PASS_THROUGH = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Dropout, nn.Identity)


class LRP:
    """Relevance of the input (or of a named layer's output) for one logit per image, under
    `rules` (layer name -> Rule).

    `model` should be canonical (see `canonical_copy`); layers without a rule use LRP-0.
    ReLU, max pooling (winner takes all), Flatten and Dropout pass relevance unchanged.
    The model is never modified: its rule layers run in a copy. Containers other than
    `nn.Sequential` (an Inception block) may only combine their children's outputs by
    concatenation, which relevance passes by splitting.
    """

    def __init__(self, model: nn.Module, rules: Dict[str, Rule]) -> None:
        self.model = model.eval()
        layers = rule_layers(model)
        unknown = set(rules) - set(layers)
        if unknown:
            raise ConfigError(f"rules name layers that are not Conv2d/Linear layers of the model: {sorted(unknown)}")
        self.sink: list = []
        self.wrapped = copy.deepcopy(model).eval()
        reads_input = None
        for name, layer in list(self.wrapped.named_modules()):
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                rule = rules.get(name, Epsilon())
                if isinstance(rule, ZBox):
                    reads_input = input_layers(model) if reads_input is None else reads_input
                    if name not in reads_input:
                        raise ConfigError(f"the z^B rule only applies to layers that read the input, not {name}")
                _replace(self.wrapped, name, _RuleModule(self._step(layer, rule, name)))
            elif isinstance(layer, nn.InstanceNorm2d):
                if layer.affine or layer.track_running_stats:
                    raise ConfigError(f"{name}: only InstanceNorm2d without affine parameters or running statistics is supported")
                _replace(self.wrapped, name, _InstanceNormModule(layer.eps))
            elif isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
                raise ConfigError(f"{name}: fold batch norms first (canonical_copy)")
            elif not (isinstance(layer, _PASS_THROUGH) or next(layer.children(), None) is not None or layer is self.wrapped):
                raise ConfigError(f"no LRP rule for layer {name} ({type(layer).__name__})")
        self.modules = dict(self.wrapped.named_modules())

    def _step(self, layer: nn.Module, rule: Rule, name: str) -> _Step:
        weight = layer.weight.detach()
        bias = layer.bias.detach() if layer.bias is not None else None
        eps = max(float(rule.eps), 1e-30)  # eps = 0 would divide 0 by 0 on dead units
        if isinstance(rule, Epsilon):
            return _Step(layer, None, None, eps, None, False, self.sink)
        if isinstance(rule, Squared):
            return _Step(layer, weight * weight, None, eps, None, True, self.sink)
        if isinstance(rule, Gamma):
            return _Step(layer, weight + rule.gamma * weight.clamp(min=0), bias, eps, None, False, self.sink)
        if isinstance(rule, Alpha1Beta0):
            return _Step(layer, weight.clamp(min=0), bias, eps, None, False, self.sink)
        if isinstance(rule, ZBox):
            stacked = torch.cat([weight, weight.clamp(min=0), weight.clamp(max=0)], dim=1)
            return _Step(layer, None, None, eps, _ZBoxTerms(rule, stacked, {}), False, self.sink)
        raise ConfigError(f"unknown rule {rule!r} for {name}")

    def check_layer(self, layer: str) -> None:
        if layer != INPUT and layer not in self.modules:
            choices = [n for n, m in self.modules.items() if n and not n.split(".")[-1].startswith(("conv", "norm"))]
            raise ConfigError(f"the network has no layer {layer!r}; read relevance at input or at one of {', '.join(choices)}")

    @torch.enable_grad()
    def __call__(self, x: torch.Tensor, target: Union[int, torch.Tensor], layer: str = INPUT) -> Tuple[torch.Tensor, torch.Tensor]:
        """Relevance (N, C, H, W) of the input, or of `layer`'s output, and logits (N, classes) for
        `target` (int or (N,) class ids)."""
        if isinstance(target, numbers.Integral) or (isinstance(target, torch.Tensor) and target.dim() == 0):
            target = torch.full((x.shape[0],), int(target), dtype=torch.long, device=x.device)
        if not isinstance(target, torch.Tensor) or tuple(target.shape) != (x.shape[0],):
            # scatter_ with fewer rows than the batch would leave the other images' relevance silently zero
            got = f"shape {tuple(target.shape)}" if isinstance(target, torch.Tensor) else repr(target)
            raise ConfigError(f"target must be one class id or a tensor of {x.shape[0]} class ids, got {got}")
        self.check_layer(layer)
        x = x.detach().clone().requires_grad_(True)
        captured = []
        hook = None if layer == INPUT else self.modules[layer].register_forward_hook(lambda m, args, out: captured.append(out))
        try:
            h = self.wrapped(x)
        finally:
            if hook is not None:
                hook.remove()
        read = x if layer == INPUT else captured[0]
        selector = torch.zeros_like(h).scatter_(1, target.reshape(-1, 1).to(h.device), 1.0)
        self.sink.clear()
        (grad,) = torch.autograd.grad(h, read, grad_outputs=selector)
        relevance = read.detach() * grad
        if layer == INPUT:
            for part in self.sink:
                relevance = relevance + part
        self.sink.clear()
        return relevance.detach(), h.detach()


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def to_image_grid(heatmaps: torch.Tensor, size: int) -> torch.Tensor:
    """(N, h, w) relevance maps brought to (N, size, size) by nearest-neighbour resampling, rescaled
    so each map keeps its total relevance."""
    if heatmaps.shape[-2:] == (size, size):
        return heatmaps
    if heatmaps.dim() != 3:
        raise ConfigError("relevance can only be brought to the image grid from a layer with a spatial output")
    resized = F.interpolate(heatmaps[:, None], size=(size, size), mode="nearest")[:, 0]
    total, new_total = heatmaps.sum(dim=(1, 2)), resized.sum(dim=(1, 2))
    scale = torch.where(new_total != 0, total / torch.where(new_total != 0, new_total, torch.ones_like(new_total)), torch.zeros_like(total))
    return resized * scale[:, None, None]


def explain(
    model: nn.Module,
    images: torch.Tensor,
    targets: torch.Tensor,
    config: LRPConfig,
    batch_size: int = 256,
    progress: Optional[ProgressCallback] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps (N, H, W) and logits (N, classes) on the CPU for uint8 or float images, in batches
    computed on `compute_device()`."""
    from .device import compute_device

    device = compute_device()
    canonical = canonical_copy(model).to(device)
    attributor = LRP(canonical, config.rules_for(canonical))
    attributor.check_layer(config.layer)
    heatmaps, logits = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device)
        batch = batch.float().div_(255.0) if batch.dtype == torch.uint8 else batch.float()
        relevance, out = attributor(batch, targets[start : start + batch_size].to(device), config.layer)
        relevance, out = relevance.cpu(), out.cpu()
        if relevance.dim() != 4:
            raise ConfigError(f"layer {config.layer} has no spatial output to read relevance from; choose a convolutional layer or block")
        heatmap = to_image_grid(relevance.sum(dim=1), images.shape[-1])
        heatmaps.append(heatmap.clamp(min=0) if config.positive else heatmap)
        logits.append(out)
        report(progress, "LRP", min(start + batch_size, len(images)), len(images), f"{min(start + batch_size, len(images))}/{len(images)} images")
    if not heatmaps:
        return torch.empty(0, *images.shape[2:]), torch.empty(0, NUM_CLASSES)
    return torch.cat(heatmaps), torch.cat(logits)


def gradient_times_input(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The reference cost of one backward pass (used by the benchmark)."""
    with torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        logits = model(x)
        (grad,) = torch.autograd.grad(logits.gather(1, target.reshape(-1, 1)).sum(), x)
    return (x * grad).detach()
