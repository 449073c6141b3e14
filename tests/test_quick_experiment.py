"""The quick experiment: a reduced training of the same attack, reachable from the CLI and the pages."""

from __future__ import annotations

import dataclasses

from core.cli import build_parser, experiment_from_args
from core.commands import train_command
from core.experiment import QUICK_TRAINING, ExperimentConfig, full_experiment, is_reduced, quick_experiment
from core.poison import PoisonConfig
from core.train import TrainConfig


def test_quick_keeps_the_attack_and_reduces_only_the_training():
    base = ExperimentConfig(PoisonConfig(source=1, target=4, size=3), TrainConfig(seed=7, weight_decay=1e-4))
    quick = quick_experiment(base)
    assert quick.poison == base.poison
    assert {k: getattr(quick.train, k) for k in QUICK_TRAINING} == QUICK_TRAINING
    assert (quick.train.seed, quick.train.weight_decay) == (7, 1e-4)
    assert is_reduced(quick) and not is_reduced(base)
    back = full_experiment(quick)
    assert back == base, "the full experiment is the base again"
    assert full_experiment(ExperimentConfig()) == ExperimentConfig()


def test_cli_quick_flag_gives_the_same_experiment_and_its_command_reproduces_it():
    parser = build_parser()
    args = parser.parse_args(["train", "--quick", "--size", "3"])
    config = experiment_from_args(args)
    assert config == quick_experiment(ExperimentConfig(PoisonConfig(size=3)))
    # The page's command for the quick experiment spells every option out and builds it again.
    again = experiment_from_args(parser.parse_args(train_command(config).split()[3:]))
    assert again == config
    assert dataclasses.asdict(again.train)["subset"] == QUICK_TRAINING["subset"]
