"""The thesis's relevance: its squared epsilon rule against a direct computation, conservation,
relevance read at an intermediate layer, the positive part, and LRP through the Inception block.

Real GTSRB images, float64; the networks are freshly initialised with batch-norm statistics
gathered on those images, so every fold and branch carries real numbers.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ConfigError
from core.lrp import INPUT, LRP, LRPConfig, Squared, canonical_copy, explain, input_layers, to_image_grid
from core.models import InceptionV3, InceptionV3MaxPool, ThesisNet

pytestmark = pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients")


@pytest.fixture(scope="module")
def images(gtsrb):
    picked = torch.linspace(0, len(gtsrb.train) - 1, 24).long()
    return gtsrb.train.images[picked].double() / 255, gtsrb.train.labels[picked]


def with_statistics(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Batch-norm running statistics from `x` (so folding is not the identity), then eval mode."""
    torch.manual_seed(0)
    model = model.double()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # cumulative average
            with torch.no_grad():
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(x)
    return model.eval()


@pytest.fixture(scope="module")
def small(images):
    x, _ = images
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 5, padding=2), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, 43),
    )
    return with_statistics(net, x)


@pytest.fixture(scope="module")
def inception(images):
    x, _ = images
    torch.manual_seed(2)
    return with_statistics(InceptionV3(), x)


@pytest.fixture(scope="module")
def inception_maxpool(images):
    """The thesis's code's network: the pool branch max-pools (relevance goes to each window's winner)."""
    x, _ = images
    torch.manual_seed(2)
    return with_statistics(InceptionV3MaxPool(), x)


def squared_rule_by_hand(net: nn.Sequential, x: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The thesis's code, layer by layer on the unfolded network: z = x²w² without bias, batch norm
    and ReLU passed through, max pooling to the winner; the logit of `target` is the start."""
    activations, pools = [], {}
    a = x
    for index, layer in enumerate(net):
        activations.append(a)
        if isinstance(layer, nn.MaxPool2d):
            out, where = F.max_pool2d(a, layer.kernel_size, layer.stride, return_indices=True)
            pools[index] = where
            a = out
        else:
            a = layer(a)
    relevance = torch.zeros_like(a).scatter_(1, target[:, None], a.gather(1, target[:, None]))
    for index in reversed(range(len(net))):
        layer, a = net[index], activations[index]
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            weight = layer.weight * layer.weight
            if isinstance(layer, nn.Conv2d):
                z = F.conv2d(a * a, weight, padding=layer.padding)
                z = z + eps * torch.sign(z)
                share = torch.where(z == 0, torch.zeros_like(z), relevance / torch.where(z == 0, torch.ones_like(z), z))
                relevance = a * a * F.conv_transpose2d(share, weight, padding=layer.padding)
            else:
                z = F.linear(a * a, weight)
                z = z + eps * torch.sign(z)
                share = torch.where(z == 0, torch.zeros_like(z), relevance / torch.where(z == 0, torch.ones_like(z), z))
                relevance = a * a * (share @ weight)
        elif isinstance(layer, nn.MaxPool2d):
            relevance = F.max_unpool2d(relevance, pools[index], layer.kernel_size, layer.stride, output_size=a.shape[-2:])
        elif isinstance(layer, nn.Flatten):
            relevance = relevance.reshape(a.shape)
    return relevance


def test_squared_rule_matches_the_thesis_computation_by_hand(small, images):
    """Ours folds batch norm into the convolution; the thesis passes relevance through it. With
    squared weights the fold's per-channel scale cancels, so both give the same relevance (up to
    where the 1e-6 stabiliser acts: on the folded or the unfolded z)."""
    x, labels = images
    canonical = canonical_copy(small)
    rules = LRPConfig("squared").rules_for(canonical)
    assert set(rules.values()) == {Squared(1e-6)}
    exact = {name: Squared(1e-15) for name in rules}
    ours, logits = LRP(canonical, exact)(x, labels)
    by_hand = squared_rule_by_hand(small, x, labels, eps=1e-15)
    assert torch.allclose(logits, small(x), atol=1e-10)
    error = (ours - by_hand).flatten(1).norm(dim=1) / by_hand.flatten(1).norm(dim=1)
    assert error.max() < 1e-6, float(error.max())
    with_eps, _ = LRP(canonical, rules)(x, labels)
    by_hand_eps = squared_rule_by_hand(small, x, labels)
    assert ((with_eps - by_hand_eps).flatten(1).norm(dim=1) / by_hand_eps.flatten(1).norm(dim=1)).median() < 1e-3
    # not a coincidence of near-zero maps: the squared rule differs from LRP-0 on the same net
    plain, _ = LRP(canonical, LRPConfig("epsilon", epsilon=1e-9).rules_for(canonical))(x, labels)
    assert ((plain - by_hand).flatten(1).norm(dim=1) / by_hand.flatten(1).norm(dim=1)).median() > 0.05


@pytest.mark.parametrize("net", ["small", "inception", "inception_maxpool"])
def test_squared_rule_conserves_the_logit_and_keeps_its_sign(net, request, images):
    """Bias plays no part in z = x²w², so even with the real biases the relevance at the input,
    and at every layer, adds up to the logit; a positive logit gives non-negative relevance."""
    model = request.getfixturevalue(net)
    x, labels = images
    canonical = canonical_copy(model)
    rules = LRPConfig("squared").rules_for(canonical)
    attributor = LRP(canonical, {name: Squared(1e-15) for name in rules})
    relevance, logits = attributor(x, labels)
    logit = logits.gather(1, labels[:, None])[:, 0]
    gap = (relevance.sum(dim=(1, 2, 3)) - logit).abs() / logit.abs()
    assert gap.max() < 1e-6, float(gap.max())
    stabilised, _ = LRP(canonical, rules)(x, labels)  # the thesis's 1e-6 absorbs a little
    assert ((stabilised.sum(dim=(1, 2, 3)) - logit).abs() / logit.abs()).median() < 1e-3
    positive = logit > 0
    assert positive.any() and (~positive).any(), "both signs occur, so the sign check means something"
    assert (relevance[positive] >= -1e-12).all() and (relevance[~positive] <= 1e-12).all()
    if net.startswith("inception"):
        at_block, _ = attributor(x, labels, "inception")
        assert at_block.shape == (len(x), 256, 32, 32)
        assert ((at_block.sum(dim=(1, 2, 3)) - logit).abs() / logit.abs()).max() < 1e-6


def test_relevance_read_at_a_layer_is_the_relevance_of_the_network_above_it(inception, images):
    """Reading at the Inception block equals explaining the layers above it with the block's output as input."""
    x, labels = images
    canonical = canonical_copy(inception)
    config = LRPConfig("squared")
    at_block, _ = LRP(canonical, config.rules_for(canonical))(x, labels, "inception")
    above = nn.Sequential(*list(canonical.children())[1:])
    with torch.no_grad():
        block_output = canonical.inception(x)
    direct, _ = LRP(above, config.rules_for(above))(block_output, labels)
    assert torch.allclose(at_block, direct, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("net", ["inception", "inception_maxpool"])
def test_the_inception_block_is_explained_through_all_four_branches(net, request, images):
    """z^B on the three branches that read the image, gamma on the pooled branch's convolution; with
    biases removed and a tiny epsilon the composite conserves the logit across the branches, whichever
    pooling the pool branch does."""
    x, labels = images
    canonical = canonical_copy(request.getfixturevalue(net))
    pooling = nn.MaxPool2d if net == "inception_maxpool" else nn.AvgPool2d
    assert type(canonical.inception.branch_pool[0]) is pooling
    assert input_layers(canonical) == {"inception.branch1x1.conv", "inception.branch5x5.conv1", "inception.branch3x3dbl.conv1"}
    config = LRPConfig("composite", epsilon=1e-9)
    rules = config.rules_for(canonical)
    assert type(rules["inception.branch_pool.conv"]).__name__ == "Gamma"
    bias_free = copy.deepcopy(canonical)
    for module in bias_free.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            module.bias.data.zero_()
    relevance, logits = LRP(bias_free, rules)(x, labels)
    logit = logits.gather(1, labels[:, None])[:, 0]
    gap = (relevance.sum(dim=(1, 2, 3)) - logit).abs() / logit.abs()
    assert gap.max() < 1e-6, float(gap.max())
    # every branch carries relevance: silencing one changes the heatmap
    for branch in ("branch1x1", "branch5x5", "branch3x3dbl", "branch_pool"):
        silenced = copy.deepcopy(bias_free)
        last = [m for m in getattr(silenced.inception, branch).modules() if isinstance(m, nn.Conv2d)][-1]
        last.weight.data.zero_()
        other, _ = LRP(silenced, rules)(x, labels)
        assert not torch.allclose(other, relevance), branch


def test_explain_reads_a_layer_brings_it_to_the_grid_and_keeps_the_positive_part(images):
    x, labels = images
    torch.manual_seed(3)
    model = with_statistics(ThesisNet(), x).float()
    x32 = x.float()
    plain, _ = explain(model, x32, labels, LRPConfig("composite"))
    positive, _ = explain(model, x32, labels, LRPConfig("composite", positive=True))
    assert (plain < 0).any() and torch.equal(positive, plain.clamp(min=0))
    at_pool, _ = explain(model, x32, labels, LRPConfig("squared", layer="pool1"))  # 12 maps of 16 x 16
    assert at_pool.shape == (len(x), 32, 32)
    canonical = canonical_copy(model)
    raw, _ = LRP(canonical, LRPConfig("squared").rules_for(canonical))(x32, labels, "pool1")
    assert torch.allclose(at_pool.sum(dim=(1, 2)), raw.sum(dim=(1, 2, 3)), rtol=1e-4)
    assert torch.allclose(at_pool[:, ::2, ::2], raw.sum(dim=1) / 4, rtol=1e-4, atol=1e-7)
    with pytest.raises(ConfigError, match="no layer 'inception'"):
        explain(model, x32, labels, LRPConfig("squared", layer="inception"))
    with pytest.raises(ConfigError, match="no spatial output"):
        explain(model, x32, labels, LRPConfig("squared", layer="fc1"))


def test_to_image_grid_keeps_each_maps_total():
    maps = torch.arange(2 * 15 * 15, dtype=torch.float64).reshape(2, 15, 15) - 100
    grid = to_image_grid(maps, 32)
    assert grid.shape == (2, 32, 32)
    assert torch.allclose(grid.sum(dim=(1, 2)), maps.sum(dim=(1, 2)))
    same = torch.rand(3, 32, 32)
    assert to_image_grid(same, 32) is same


@pytest.mark.parametrize("layer", ["", "inception; rm", "../x", None, 3])
def test_a_bad_layer_name_is_refused(layer):
    with pytest.raises(ConfigError, match="relevance layer"):
        LRPConfig(layer=layer)


def test_the_default_reads_at_the_input():
    assert LRPConfig().layer == INPUT and not LRPConfig().positive
    assert LRPConfig("squared", layer="inception", positive=True).short_name == "squared@inception+"
