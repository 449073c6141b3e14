"""captum's LRP on the same rules and the same canonical model as `core.lrp`: the reference the
engine is tested and benchmarked against (captum is imported only when it runs)."""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Dict

import torch
import torch.nn.functional as F
from torch import nn

from .lrp import Alpha1Beta0, Epsilon, Gamma, Rule, ZBox, conv_options


def captum_relevance(model: nn.Sequential, rules: Dict[str, Rule], x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """captum's LRP with the same rules on the same canonical model (for tests and benchmarks).

    captum deletes every `.rule` after each call and has no rule for Flatten, InstanceNorm
    or z^B, so rules are attached afresh on every call and the missing ones are supplied.
    """
    from captum.attr import LRP as CaptumLRP
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule

    net = copy.deepcopy(model).eval()
    net = nn.Sequential(OrderedDict((n, m) for n, m in net.named_children() if not isinstance(m, (nn.Identity,))))
    for name, module in list(net.named_children()):
        if isinstance(module, nn.InstanceNorm2d):
            setattr(net, name, _CaptumCentredInstanceNorm(module.eps))
    for name, module in net.named_children():
        rule = rules.get(name, Epsilon()) if isinstance(module, (nn.Conv2d, nn.Linear)) else None
        if isinstance(rule, Epsilon):
            module.rule = EpsilonRule(epsilon=rule.eps)
        elif isinstance(rule, Gamma):
            module.rule = GammaRule(gamma=rule.gamma)
        elif isinstance(rule, Alpha1Beta0):
            module.rule = Alpha1_Beta0_Rule()
        elif isinstance(rule, ZBox):
            module.rule = _captum_zbox_rule_class()(rule.low, rule.high, rule.eps)
        elif isinstance(module, (nn.Flatten, _CaptumCentredInstanceNorm, nn.MaxPool2d)):
            module.rule = EpsilonRule(epsilon=1e-30)
    return CaptumLRP(net).attribute(x.detach().clone(), target=target).detach()


class _CaptumCentredInstanceNorm(nn.Module):
    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var, mean = torch.var_mean(x, dim=(2, 3), correction=0, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps).detach()


def _captum_zbox_rule_class():
    """captum has no z^B rule; this PropagationRule adds it (inputs bounded in [low, high])."""
    from captum.attr._utils.lrp_rules import PropagationRule

    class ZBoxRule(PropagationRule):
        def __init__(self, low: float, high: float, epsilon: float) -> None:
            self.low, self.high, self.STABILITY_FACTOR = low, high, epsilon

        def _manipulate_weights(self, module, inputs, outputs) -> None:
            pass

        def forward_hook(self, module, inputs, outputs):
            x = inputs[0]
            weight = module.weight.detach()
            self._module, self._x_shape = module, x.shape
            conv = isinstance(module, nn.Conv2d)
            options = conv_options(module) if conv else {}
            apply = (lambda t, w: F.conv2d(t, w, None, **options)) if conv else (lambda t, w: F.linear(t, w))
            with torch.no_grad():
                bound = apply(torch.full_like(x, self.low), weight.clamp(min=0)) + apply(torch.full_like(x, self.high), weight.clamp(max=0))
            shifted = outputs - bound
            self._has_single_input = True
            self._handle_input_hooks = []
            if not hasattr(x, "hook_registered"):
                self._handle_input_hooks.append(x.register_hook(self._create_backward_hook_input(x.data)))
                x.hook_registered = True
            self._handle_output_hook = shifted.register_hook(self._create_backward_hook_output(shifted.data))
            return shifted.clone()

        def _create_backward_hook_output(self, outputs):
            def hook(grad):
                sign = torch.sign(outputs)
                sign[sign == 0] = 1
                s = grad / (outputs + sign * self.STABILITY_FACTOR)
                self.relevance_output[grad.device] = grad.data
                self._s = s.detach()
                return s

            return hook

        def _create_backward_hook_input(self, inputs):
            def hook(grad):
                module, s = self._module, self._s
                weight = module.weight.detach()
                if isinstance(module, nn.Conv2d):
                    options = conv_options(module)
                    back = lambda w: torch.nn.grad.conv2d_input(self._x_shape, w, s, **options)  # noqa: E731
                else:
                    back = lambda w: s @ w  # noqa: E731
                relevance = grad * inputs - self.low * back(weight.clamp(min=0)) - self.high * back(weight.clamp(max=0))
                self.relevance_input[grad.device] = relevance.data
                grad.replace_out = relevance
                return relevance

            return hook

    return ZBoxRule
