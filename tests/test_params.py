"""The experiment's parameters are declared once, and the command line, the link, the command
strings and the Home table all follow from that declaration."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field

import pytest

from core import params
from core.commands import train_command
from core.errors import ConfigError
from core.experiment import ExperimentConfig, quick_experiment
from core.params import REAL, SWITCH, WHOLE, check_declared, parameter
from core.poison import PoisonConfig
from core.train import TrainConfig
from core.validation import one_of, real_number, true_or_false, whole_number


@dataclass(frozen=True)
class Schedule:
    """A parameter section that does not exist in the product: added here as a new one would be."""

    warmup: float = parameter(0.3, REAL, "--warmup", key="warm", label="warm-up share", help="share of the steps spent warming up",
                              low=0.0, high=1.0, open_high=True)
    rounds: int = parameter(3, WHOLE, "--rounds", key="rounds", label="rounds", help="rounds of the schedule", low=1, high=9)
    cool: bool = parameter(True, SWITCH, "--no-cool", key="cool", label="cool-down", help="skip the cool-down")

    def __post_init__(self) -> None:
        check_declared(self)


@dataclass(frozen=True)
class WiderExperiment:
    poison: PoisonConfig = field(default_factory=PoisonConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    schedule: Schedule = field(default_factory=Schedule)


CHANGED = WiderExperiment(schedule=Schedule(warmup=0.125, rounds=7, cool=False))


def test_a_new_declared_parameter_reaches_the_command_line_the_link_the_command_and_the_table():
    parser = argparse.ArgumentParser()
    params.add_experiment_options(parser, WiderExperiment, {})
    help_text = parser.format_help()
    assert "--warmup" in help_text and "share of the steps spent warming up (default 0.3)" in " ".join(help_text.split())
    assert params.experiment_from_args(WiderExperiment, parser.parse_args([])) == WiderExperiment()

    words = " ".join(params.experiment_options(CHANGED)).split()
    assert words[-5:] == ["--warmup", "0.125", "--rounds", "7", "--no-cool"]
    assert params.experiment_from_args(WiderExperiment, parser.parse_args(words)) == CHANGED

    query = params.to_query(CHANGED)
    assert (query["warm"], query["rounds"], query["cool"]) == ("0.125", "7", "0")
    assert params.from_query(WiderExperiment, query) == CHANGED
    assert params.from_query(WiderExperiment, {}) == WiderExperiment()

    rows = {row["parameter"]: row["value"] for row in params.parameter_rows(CHANGED)}
    assert (rows["warm-up share"], rows["rounds"], rows["cool-down"]) == ("0.125", "7", "no")
    with pytest.raises(ConfigError, match="rounds must be a whole number in 1 … 9, got 10"):
        params.from_query(WiderExperiment, {"rounds": "10"})


def test_every_experiment_parameter_is_declared_with_a_unique_flag_and_key():
    declared = list(params.experiment_params(ExperimentConfig))
    assert {(s, n) for s, n, _, _ in declared} == {(s.name, f.name) for s in dataclasses.fields(ExperimentConfig)
                                                   for f in dataclasses.fields(s.default_factory)}
    assert len({p.flag for *_, p, _ in declared}) == len({p.key for *_, p, _ in declared}) == len(declared)


def test_the_link_and_the_command_line_reproduce_the_experiment():
    changed = ExperimentConfig(PoisonConfig(source=14, target=1, size=3, color=(255, 0, 10), x_range=(3, 9), y_range=(0, 4),
                                            fraction=0.0625, seed=9),
                               TrainConfig(max_epochs=3, patience=2, batch_size=64, learning_rate=3e-4, weight_decay=1e-5,
                                           augment=False, subset=500, seed=4))
    from core.cli import build_parser, experiment_from_args

    for config in (ExperimentConfig(), quick_experiment(), changed):
        assert ExperimentConfig.from_query(config.to_query()) == config
        assert experiment_from_args(build_parser().parse_args(train_command(config).split()[3:])) == config
    rows = {row["parameter"]: row["value"] for row in params.parameter_rows(changed)}
    assert rows["sticker colour (RGB)"] == "#ff000a = (255, 0, 10)" and rows["sticker x window"] == "3–9" and rows["augmentation"] == "no"
    assert all(isinstance(value, str) for value in rows.values())  # one type per column: Arrow can show the table


@pytest.mark.parametrize("value", [True, 2.5, "3", None, math.nan])
def test_whole_number_refuses_what_is_not_one(value):
    with pytest.raises(ConfigError, match=r"k must be a whole number in 1 … 5, got"):
        whole_number("k", value, 1, 5)


@pytest.mark.parametrize("value, low, high, open_low, open_high, message", [
    (0.0, 0.0, 1.0, True, False, r"t must be a number in \(0, 1\], got 0.0"),
    (1.0, 0.0, 1.0, False, True, r"t must be a number in \[0, 1\), got 1.0"),
    (math.inf, 0.0, None, True, False, r"t must be a number in \(0, ∞\), got inf"),
    (math.nan, None, None, False, False, r"t must be a number, got nan"),
    (True, 0.0, 1.0, False, False, r"t must be a number in \[0, 1\], got True"),
    ("0.5", 0.0, 1.0, False, False, r"got '0.5'"),
])
def test_real_number_refuses_what_is_outside_or_not_finite(value, low, high, open_low, open_high, message):
    with pytest.raises(ConfigError, match=message):
        real_number("t", value, low, high, open_low=open_low, open_high=open_high)


def test_the_checks_return_plain_values():
    import numpy as np

    assert type(whole_number("k", np.int64(3), 1, 5)) is int and whole_number("k", 5, 1, 5) == 5
    assert type(real_number("t", np.float32(0.5), 0.0, 1.0)) is float and real_number("t", 1, 0.0, 1.0) == 1.0
    assert one_of("rule", "gamma", ("epsilon", "gamma")) == "gamma" and true_or_false("on", False) is False
    with pytest.raises(ConfigError, match="rule must be one of 'epsilon', 'gamma', got 'zplus'"):
        one_of("rule", "zplus", ("epsilon", "gamma"))
    with pytest.raises(ConfigError, match="pool must be one of 1, 2, got True"):
        one_of("pool", True, (1, 2))
    with pytest.raises(ConfigError, match="on must be true or false, got 1"):
        true_or_false("on", 1)


def test_the_gw_page_command_parses_back_into_the_same_settings():
    """What the GW page prints reruns the same detection: experiment, relevance and GW settings."""
    from core.cli import _lrp_from_args, build_parser, experiment_from_args
    from core.commands import detect_command
    from core.experiment import ExperimentConfig
    from core.gw_kmeans import GWConfig
    from core.lrp import LRPConfig
    from core.train import TrainConfig

    experiment = ExperimentConfig(train=TrainConfig(architecture="inception_v3", max_epochs=6))
    lrp = LRPConfig("squared", layer="inception", positive=True)
    gw = GWConfig(threshold=0.9, epsilon=1e-3, epsilon_init=1e-2, max_iter=5, seed=7)
    command = detect_command(experiment, 5, lrp, gw)
    assert command.startswith("python -m core detect --method gw ")
    args = build_parser().parse_args(command.split()[3:])
    assert experiment_from_args(args) == experiment and _lrp_from_args(args) == lrp and args.class_id == 5
    assert (args.threshold, args.eps, args.eps_init, args.max_iter, args.cluster_seed) == (0.9, 1e-3, 1e-2, 5, 7)
    assert "--positive" not in detect_command(experiment, 5, LRPConfig(), gw)


def test_gw_reads_the_positive_part_by_default_and_the_other_detectors_the_signed_heatmaps():
    """GW k-means' own default (core.presets.GW_RELEVANCE) on the command line, in the page's command
    line and in the detector registry; --signed turns it off; the thesis preset's rule is kept."""
    from core.cli import _lrp_from_args, build_parser, parse_arguments
    from core.commands import detect_command
    from core.experiment import ExperimentConfig
    from core.gw_kmeans import GWConfig
    from core.lrp import LRPConfig
    from core.presets import GW_RELEVANCE, PRESETS

    assert GW_RELEVANCE == LRPConfig(positive=True)
    assert _lrp_from_args(parse_arguments(["detect"])) == GW_RELEVANCE
    assert _lrp_from_args(parse_arguments(["detect", "--signed"])) == LRPConfig()
    assert _lrp_from_args(parse_arguments(["detect", "--preset", "thesis"])) == PRESETS["thesis"].lrp
    for command in ("heatmaps", "spectral", "baselines"):
        assert _lrp_from_args(parse_arguments([command])) == LRPConfig()
    for lrp in (GW_RELEVANCE, LRPConfig(), LRPConfig("squared", layer="relu1")):
        line = detect_command(ExperimentConfig(), 5, lrp, GWConfig())
        assert _lrp_from_args(build_parser().parse_args(line.split()[3:])) == lrp, line
    words = detect_command(ExperimentConfig(), 5, GW_RELEVANCE, GWConfig()).split()
    assert "--positive" not in words and "--signed" not in words  # the default needs no word
    # A GW result computed on the signed heatmaps (the default before) is never read as the new default's.
    from core.detectors import detection_path
    from core.heatmaps import heatmaps_path

    signed, positive = (heatmaps_path("model-thesis_net-0", 5, lrp) for lrp in (LRPConfig(), GW_RELEVANCE))
    assert signed != positive and detection_path(signed.name, GWConfig()) != detection_path(positive.name, GWConfig())


def test_a_preset_sets_the_defaults_and_options_given_as_well_win():
    from core.cli import _lrp_from_args, experiment_from_args, parse_arguments
    from core.gw_kmeans import GWConfig
    from core.lrp import LRPConfig
    from core.presets import PRESETS

    thesis = PRESETS["thesis"]
    args = parse_arguments(["detect", "--preset", "thesis"])
    from core.recipes import RECIPES
    from core.train import TrainConfig

    assert experiment_from_args(args).train == RECIPES["thesis"].apply(TrainConfig(architecture="inception_v3_maxpool"))
    assert experiment_from_args(args).train == thesis.training(TrainConfig())
    assert _lrp_from_args(args) == LRPConfig("squared", layer="inception") == thesis.lrp
    gw = params.config_from_args(GWConfig, args, epsilon_init=args.eps_init)
    assert gw == thesis.gw
    args = parse_arguments(["detect", "--preset", "thesis", "--max-iter", "3", "--rule", "composite", "--architecture", "thesis_net",
                            "--relevance-layer", "relu1"])
    assert (args.max_iter, args.rule, args.architecture, args.relevance_layer, args.barycenter) == (3, "composite", "thesis_net", "relu1", "exact")
    heatmaps = parse_arguments(["heatmaps", "--preset", "thesis"])
    assert _lrp_from_args(heatmaps) == thesis.lrp and heatmaps.threshold == 0.99
    best = parse_arguments(["detect", "--preset", "best"])
    assert (best.architecture, best.rule, best.positive, best.relevance_layer, best.barycenter) == ("inception_v3", "composite", True, "input", "entropic")
    assert experiment_from_args(best).train == TrainConfig(architecture="inception_v3", max_epochs=6) == PRESETS["best"].training(TrainConfig())
    assert _lrp_from_args(best) == LRPConfig("composite", positive=True)
    with pytest.raises(SystemExit):
        parse_arguments(["detect", "--preset", "nonsense"])


def test_files_made_from_gw_flags_are_named_by_its_default_settings(monkeypatch, tmp_path):
    """A cleansed model or a study score made from GW k-means' flags before its default relevance,
    settings or solver changed is never read as today's; the other detectors' files keep their names."""
    from types import SimpleNamespace

    import core.detectors as detectors
    from core.cleanse import cleansed_path
    from core.experiment import ExperimentConfig
    from core.study import score_path

    monkeypatch.setenv("POISONLAB_CACHE", str(tmp_path))
    data, experiment = SimpleNamespace(content_id="gtsrb-test"), ExperimentConfig()
    before = {d: (cleansed_path(experiment, d, data), score_path(experiment, d, data)) for d in ("gw", "spectral")}
    monkeypatch.setattr(detectors, "_GW_ARTIFACT_VERSION", detectors._GW_ARTIFACT_VERSION + 1)
    monkeypatch.setattr(detectors, "GW_RELEVANCE", detectors.LRPConfig())
    after = {d: (cleansed_path(experiment, d, data), score_path(experiment, d, data)) for d in ("gw", "spectral")}
    assert after["spectral"] == before["spectral"]
    assert after["gw"][0] != before["gw"][0] and after["gw"][1] != before["gw"][1]
