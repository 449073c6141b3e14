"""The thesis network, training configuration and runs, the model cache, and the experiment
configuration that the CLI, the pages and the URL share."""

from __future__ import annotations

import json
import math
from collections import Counter

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from torch import nn

from core.data import NUM_CLASSES
from core.errors import ConfigError
from core.cache import save_artifact
from core.experiment import ExperimentConfig, load_trained, model_path, poisoned_data, train_or_load
from core.models import ARCHITECTURES, InceptionV3, ThesisNet, architecture_name, build_model, predict
from core.poison import PoisonConfig, attack_test_set, poison_split
from core.train import TrainConfig

# Reaches about 0.62 clean accuracy and 0.94 attack success in ~7 s on two cores.
QUICK = ExperimentConfig(train=TrainConfig(subset=3000, max_epochs=3, batch_size=128, augment=False))
# Smallest run that still exercises shuffling, augmentation and early-stopping bookkeeping.
TINY = ExperimentConfig(train=TrainConfig(subset=500, max_epochs=2, batch_size=128))
CHANCE = 1 / NUM_CLASSES


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def without_timing(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "train_seconds"}


# --- the network -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 7])
def test_thesis_net_output_shape(n):
    model = ThesisNet()
    x = torch.rand(n, 3, 32, 32)
    assert model(x).shape == (n, NUM_CLASSES)
    model.eval()
    assert model(x[:1]).shape == (1, NUM_CLASSES)


def test_thesis_net_follows_the_thesis_appendix():
    model = ThesisNet()
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(12, (5, 5)), (32, (5, 5)), (64, (5, 5))]
    assert [(l.in_features, l.out_features) for l in linears] == [(1024, 256), (256, 128), (128, 43)]
    assert sum(isinstance(m, nn.MaxPool2d) for m in model) == 3


def test_no_module_instance_is_used_twice():
    model = ThesisNet()
    # modules() drops repeats, so look at every registration.
    registered = [m for _, m in model.named_modules(remove_duplicate=False)]
    assert len(registered) == len({id(m) for m in registered})
    params = [p for _, p in model.named_parameters(remove_duplicate=False)]
    assert len(params) == len({id(p) for p in params})


def test_every_module_runs_exactly_once_per_forward():
    """No module is applied twice and no op hides outside a module, as LRP requires."""
    model = ThesisNet()
    calls = Counter()
    leaves = [(name, m) for name, m in model.named_modules() if not list(m.children())]
    for name, module in leaves:
        module.register_forward_hook(lambda mod, inp, out, name=name: calls.update([name]))
    model.eval()
    x = torch.rand(3, 3, 32, 32)
    out = model(x)
    assert calls == Counter({name: 1 for name, _ in leaves})
    replay = x
    for module in model:
        replay = module(replay)
    assert torch.equal(out, replay), "the forward pass is exactly the chain of its modules"


def test_every_normalisation_directly_follows_its_layer():
    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    children = list(ThesisNet().named_children())
    norms = 0
    for i, (name, module) in enumerate(children):
        if isinstance(module, norm_types):
            norms += 1
            assert i > 0, name
            previous = children[i - 1][1]
            assert isinstance(previous, (nn.Conv2d, nn.Linear)), f"{name} follows {children[i - 1][0]}"
            width = previous.out_channels if isinstance(previous, nn.Conv2d) else previous.out_features
            assert module.num_features == width, name
    assert norms == 3


@pytest.mark.parametrize("architecture, pooling", [("inception_v3", nn.AvgPool2d), ("inception_v3_maxpool", nn.MaxPool2d)])
def test_inception_v3_follows_the_thesis_listing(architecture, pooling):
    """The thesis's `InceptionNet3` summary: 1,110,027 weights, a 256-map block on the full grid,
    three 2x2 convolutions each after pooling, dense 256-256-128-43; the pool branch averages (the
    listing) or max-pools (the code the thesis ran), under names of their own."""
    model = build_model(architecture)
    assert sum(p.numel() for p in model.parameters()) == 1_110_027
    shapes = {}
    for name in ("inception", "pool1", "relu2", "pool2", "relu3", "pool3", "relu4", "pool4", "relu6"):
        getattr(model, name).register_forward_hook(lambda m, args, out, name=name: shapes.update({name: tuple(out.shape)}))
    model.eval()
    for n in (1, 7):
        shapes.clear()
        assert model(torch.rand(n, 3, 32, 32)).shape == (n, NUM_CLASSES)
        assert shapes == {"inception": (n, 256, 32, 32), "pool1": (n, 256, 16, 16), "relu2": (n, 256, 15, 15),
                          "pool2": (n, 256, 7, 7), "relu3": (n, 256, 6, 6), "pool3": (n, 256, 3, 3),
                          "relu4": (n, 256, 2, 2), "pool4": (n, 256, 1, 1), "relu6": (n, 128)}
    block = model.inception
    widths = [[m.out_channels for m in branch if isinstance(m, nn.Conv2d)] for branch in block.children()]
    assert widths == [[64], [48, 64], [64, 96, 96], [32]]
    assert type(block.branch_pool[0]) is pooling and model.penultimate == "relu6"
    assert architecture_name(model) == architecture


def test_inception_v3_runs_each_module_once_with_every_norm_after_its_layer():
    model = InceptionV3()
    calls = Counter()
    leaves = [(name, m) for name, m in model.named_modules() if not list(m.children())]
    for name, module in leaves:
        module.register_forward_hook(lambda mod, inp, out, name=name: calls.update([name]))
    model.eval()
    model(torch.rand(2, 3, 32, 32))
    assert calls == Counter({name: 1 for name, _ in leaves})
    registered = [m for _, m in model.named_modules(remove_duplicate=False)]
    assert len(registered) == len({id(m) for m in registered})
    norms = 0
    for sequence in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        children = list(sequence.children())
        for i, module in enumerate(children):
            if isinstance(module, nn.BatchNorm2d):
                norms += 1
                assert isinstance(children[i - 1], nn.Conv2d) and children[i - 1].out_channels == module.num_features
    assert norms == 10


@pytest.mark.data
def test_inception_v3_trains_on_real_images_and_saves_as_safetensors(gtsrb, tmp_path):
    """Its channels-last training lowers the loss, beats chance on held-out images and hands back
    ordinary contiguous weights that safetensors stores and restores."""
    from safetensors.torch import load_file, save_file

    from core.data import Split
    from core.train import fit

    classes = torch.tensor([12, 38])  # priority road, keep right
    picked = torch.nonzero(torch.isin(gtsrb.train.labels, classes)).flatten()
    picked = picked[torch.randperm(len(picked), generator=torch.Generator().manual_seed(0))[:384]]
    train = Split(gtsrb.train.images[picked[:256]], gtsrb.train.labels[picked[:256]])
    val = Split(gtsrb.train.images[picked[256:]], gtsrb.train.labels[picked[256:]])
    torch.manual_seed(0)
    model = InceptionV3()
    result = fit(model, train, val, TrainConfig(architecture="inception_v3", max_epochs=4, batch_size=32, learning_rate=1e-2))
    history = result.history
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    assert history[-1]["val_accuracy"] > 0.75  # two classes: chance is 0.5
    state = model.state_dict()
    assert all(t.is_contiguous() for t in state.values())
    save_file(state, tmp_path / "inception.safetensors")
    restored = InceptionV3()
    restored.load_state_dict(load_file(tmp_path / "inception.safetensors"))
    restored.eval()
    x = val.float_images()[:16]
    with torch.no_grad():
        assert torch.equal(restored(x), model(x))


def test_build_model():
    assert isinstance(build_model("thesis_net"), ThesisNet)
    assert isinstance(build_model("inception_v3"), InceptionV3)
    with pytest.raises(ConfigError, match="unknown architecture 'resnet'.*thesis_net"):
        build_model("resnet")


def test_predict_accepts_uint8_and_float_and_keeps_the_mode(gtsrb):
    torch.manual_seed(0)
    model = ThesisNet()
    model.train()
    images = gtsrb.test.images[:50]
    a = predict(model, images, batch_size=16)
    b = predict(model, images.float() / 255)
    assert a.shape == (50,) and a.dtype == torch.int64 and torch.equal(a, b)
    assert model.training
    assert predict(model, images[:0]).shape == (0,)


# --- training configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"architecture": "resnet"}, "unknown architecture"),
        ({"max_epochs": 0}, "max_epochs must be a whole number in 1"),
        ({"max_epochs": 2.5}, "max_epochs must be a whole number"),
        ({"max_epochs": True}, "max_epochs must be a whole number"),
        ({"patience": 0}, "patience must be a whole number in 1"),
        ({"batch_size": 0}, "batch_size must be a whole number in 1"),
        ({"batch_size": "256"}, "batch_size must be a whole number"),
        ({"subset": -1}, "subset must be a whole number in 0"),
        ({"seed": -1}, "seed must be a whole number in 0"),
        ({"learning_rate": 0.0}, "learning_rate must be a number"),
        ({"learning_rate": math.nan}, "learning_rate must be a number"),
        ({"learning_rate": 11}, "learning_rate must be a number"),
        ({"weight_decay": -0.1}, "weight_decay must be a number"),
        ({"weight_decay": math.inf}, "weight_decay must be a number"),
        ({"augment": "yes"}, "augment must be true or false"),
        ({"augment": 1}, "augment must be true or false"),
    ],
)
def test_invalid_train_config_is_a_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message) as caught:
        TrainConfig(**kwargs)
    assert isinstance(caught.value, ValueError)


def test_train_config_normalises_numbers():
    config = TrainConfig(learning_rate=1, weight_decay=0)
    assert isinstance(config.learning_rate, float) and isinstance(config.weight_decay, float)


# --- training runs -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(gtsrb):
    return train_or_load(QUICK, gtsrb, use_cache=False)


def test_short_training_beats_chance_and_learns_the_backdoor(quick_run):
    m = quick_run.metrics
    assert not quick_run.from_cache
    assert m["clean_accuracy"] > 0.4 > 10 * CHANCE
    assert m["attack_success_rate"] > 0.5
    assert m["epochs"] == 3 and 1 <= m["best_epoch"] <= 3
    assert [h["epoch"] for h in m["history"]] == [1, 2, 3]


def test_reported_metrics_match_an_independent_evaluation(gtsrb, quick_run):
    model, m = quick_run.model, quick_run.metrics
    assert not model.training
    test_pred = predict(model, gtsrb.test.images)
    assert m["clean_accuracy"] == pytest.approx(float((test_pred == gtsrb.test.labels).float().mean()), abs=1e-6)
    source = gtsrb.test.labels == 2
    assert m["source_accuracy"] == pytest.approx(float((test_pred[source] == 2).float().mean()), abs=1e-6)
    attack = attack_test_set(gtsrb.test, QUICK.poison)
    asr = float((predict(model, attack.images) == 5).float().mean())
    assert m["attack_success_rate"] == pytest.approx(asr, abs=1e-6)
    assert m["n_attack_test"] == 750
    assert sum(m["source_predictions_stickered"]) == 750 and m["source_predictions_stickered"][5] == round(asr * 750)


def test_subset_reports_the_poisoned_images_it_trained_on(gtsrb, quick_run):
    m = quick_run.metrics
    data = poisoned_data(gtsrb, QUICK)
    full = poison_split(gtsrb.train, QUICK.poison)
    assert m["n_train"] == len(data.train) == 3000
    assert m["n_poisoned"] == int(data.train.poison_mask.sum()) == int(full.poison_mask[data.train_index].sum())
    assert 0 < m["n_poisoned"] < 813
    assert m["n_poisoned_val"] == 103
    assert torch.equal(data.train.images, full.images[data.train_index])


@pytest.fixture(scope="module")
def tiny_run(gtsrb):
    return train_or_load(TINY, gtsrb, use_cache=False)


@pytest.fixture(scope="module")
def tiny_artifact(gtsrb, tmp_path_factory):
    """A cached training of TINY (trained once per module) and the bytes of its model file."""
    folder = tmp_path_factory.mktemp("model-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("POISONLAB_CACHE", str(folder))
        trained = train_or_load(TINY, gtsrb)
    assert trained.path.parent == folder
    return trained, trained.path.read_bytes()


def install(artifact, gtsrb):
    """Put the cached model file into the current cache, where train_or_load looks for it."""
    trained, raw = artifact
    path = model_path(gtsrb, TINY)
    assert path.name == trained.path.name
    path.write_bytes(raw)
    return path


def test_training_is_deterministic(tiny_run, tiny_artifact):
    trained, _ = tiny_artifact
    assert not trained.from_cache and not tiny_run.from_cache
    assert same_weights(trained.model, tiny_run.model)
    assert without_timing(trained.metrics) == without_timing(tiny_run.metrics)


def test_model_is_cached_and_reloaded(gtsrb, tmp_cache, tiny_artifact):
    trained, raw = tiny_artifact
    assert trained.path.suffix == ".safetensors"
    with safe_open(str(trained.path), framework="pt") as handle:
        assert set(handle.keys()) == set(trained.model.state_dict())
    path = install(tiny_artifact, gtsrb)
    assert path.parent == tmp_cache

    again = train_or_load(TINY, gtsrb)
    assert again.from_cache and again.path == path
    assert again.metrics == trained.metrics
    assert same_weights(again.model, trained.model)
    assert not again.model.training
    images = gtsrb.test.images[:200]
    assert torch.equal(predict(again.model, images), predict(trained.model, images))


def _truncate(path):
    path.write_bytes(path.read_bytes()[:-1000])


def _flip_weight(path):
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x40
    path.write_bytes(bytes(raw))


def _flip_metric(path):
    """Change one digit of the stored clean accuracy: a valid file that tells a wrong number."""
    raw = bytearray(path.read_bytes())
    key = b'\\"clean_accuracy\\": 0.'
    at = raw.index(key) + len(key)
    raw[at] = ord("9") if raw[at] != ord("9") else ord("8")
    path.write_bytes(bytes(raw))


def _foreign_weights(path):
    """A whole, valid artifact whose tensors do not fit the architecture."""
    save_artifact(path, {"weight": torch.zeros(3)}, {"metrics": {}})


@pytest.mark.parametrize("damage", [_truncate, _flip_weight, _flip_metric, _foreign_weights])
def test_damaged_model_file_is_detected(gtsrb, tmp_cache, tiny_artifact, damage):
    path = install(tiny_artifact, gtsrb)
    assert load_trained(gtsrb, TINY) is not None
    damage(path)
    assert load_trained(gtsrb, TINY) is None
    assert not path.exists(), "the damaged file is removed so that it is rebuilt"


def test_damaged_model_is_retrained(gtsrb, tmp_cache, tiny_artifact):
    trained, _ = tiny_artifact
    path = install(tiny_artifact, gtsrb)
    _truncate(path)
    again = train_or_load(TINY, gtsrb)
    assert not again.from_cache
    assert same_weights(again.model, trained.model)
    assert without_timing(again.metrics) == without_timing(trained.metrics)
    assert train_or_load(TINY, gtsrb).from_cache, "the retrained model was stored whole"


def test_each_experiment_has_its_own_model_file(gtsrb):
    other = ExperimentConfig(poison=PoisonConfig(seed=1), train=TINY.train)
    assert model_path(gtsrb, other) != model_path(gtsrb, TINY)
    assert model_path(gtsrb, TINY).name.startswith("model-thesis_net-")


# --- the experiment configuration --------------------------------------------------------------


@st.composite
def experiment_configs(draw):
    size = draw(st.integers(1, 6))
    windows = []
    for _ in range(2):
        lo = draw(st.integers(0, 32 - size))
        windows.append((lo, draw(st.integers(lo, 32 - size))))
    source = draw(st.integers(0, 42))
    poison = PoisonConfig(
        source=source, target=draw(st.integers(0, 42).filter(lambda t: t != source)), size=size,
        color=draw(st.tuples(*[st.integers(0, 255)] * 3)), x_range=windows[0], y_range=windows[1],
        fraction=draw(st.floats(0, 1, exclude_max=True)), seed=draw(st.integers(0, 2**63 - 1)),
    )
    train = TrainConfig(
        architecture=draw(st.sampled_from(sorted(ARCHITECTURES))), max_epochs=draw(st.integers(1, 1000)),
        patience=draw(st.integers(1, 1000)), batch_size=draw(st.integers(1, 65536)),
        learning_rate=draw(st.floats(1e-7, 10.0)), weight_decay=draw(st.floats(0.0, 1.0)),
        augment=draw(st.booleans()), subset=draw(st.integers(0, 10**8)), seed=draw(st.integers(0, 2**63 - 1)),
    )
    return ExperimentConfig(poison, train)


@settings(max_examples=150, deadline=None)
@given(config=experiment_configs())
def test_query_round_trip(config):
    query = config.to_query()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in query.items())
    assert ExperimentConfig.from_query(query) == config
    assert ExperimentConfig.from_dict(config.to_dict()) == config


def test_from_query_defaults_and_errors():
    assert ExperimentConfig.from_query({}) == ExperimentConfig()
    assert ExperimentConfig.from_query({"pp": "0.2", "color": "#ff0000"}).poison == PoisonConfig(fraction=0.2, color=(255, 0, 0))
    for bad in ({"pp": "lots"}, {"x": "16"}, {"color": "ffff"}, {"color": "zzzzzz"}, {"epochs": "ten"}, {"source": "99"}, {"pp": "nan"}):
        with pytest.raises(ConfigError):
            ExperimentConfig.from_query(bad)


def test_from_dict_accepts_json_and_rejects_unknown_keys():
    config = ExperimentConfig(poison=PoisonConfig(size=3, x_range=(10, 12)), train=TrainConfig(subset=100))
    assert ExperimentConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert ExperimentConfig.from_dict({}) == ExperimentConfig()
    assert ExperimentConfig.from_dict({"poison": {"size": 3}}).poison.size == 3
    with pytest.raises(ConfigError, match="unknown experiment sections: model"):
        ExperimentConfig.from_dict({"model": {}})
    with pytest.raises(ConfigError, match="unknown PoisonConfig parameters: colour"):
        ExperimentConfig.from_dict({"poison": {"colour": [1, 2, 3]}})
    with pytest.raises(ConfigError, match="unknown TrainConfig parameters: epochs"):
        ExperimentConfig.from_dict({"train": {"epochs": 3}})
    with pytest.raises(ConfigError, match="must be a mapping"):
        ExperimentConfig.from_dict([("poison", {})])
    with pytest.raises(ConfigError, match="must be a mapping"):
        ExperimentConfig.from_dict({"train": 3})
    with pytest.raises(ConfigError, match="sticker size"):
        ExperimentConfig.from_dict({"poison": {"size": 0}})
