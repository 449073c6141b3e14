"""Bad input, swept: every config of the core and every numeric CLI option, with out-of-range,
wrong-type and extreme values. Each gives a ConfigError with a message (the CLI: exit code 2
and one line on stderr), never another exception or a traceback, and nothing is written."""

from __future__ import annotations

import contextlib
import dataclasses
import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.detectors import GWDistanceConfig
from core.defense import DefenseConfig
from core.errors import ConfigError
from core.evasion import AttackConfig
from core.experiment import ExperimentConfig
from core.gw_kmeans import GWConfig
from core.lrp import LRPConfig
from core.poison import PoisonConfig
from core.robustness import RobustnessConfig
from core.spectral import SpectralConfig
from core.train import TrainConfig

CONFIGS = (PoisonConfig, TrainConfig, LRPConfig, SpectralConfig, GWConfig, GWDistanceConfig, AttackConfig, DefenseConfig,
           RobustnessConfig)

NASTY = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20), st.lists(st.integers(-5, 300), max_size=4),
    st.sampled_from([-1, 0, 1, 2**31, 2**63, -(2**63), 1e-300, 1e300, float("nan"), float("inf"), -float("inf"), "", "5", [], {}, ()]),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CONFIGS), st.data())
def test_every_config_field_refuses_bad_values_with_a_config_error(kind, data):
    field = data.draw(st.sampled_from([f for f in dataclasses.fields(kind)]), label="field")
    value = data.draw(NASTY, label="value")
    try:
        config = kind(**{field.name: value})
    except ConfigError as exc:
        assert str(exc) and "Traceback" not in str(exc)
        return
    # Accepted: then the value must really be usable, i.e. hash and print like a config.
    from core.cache import config_hash

    config_hash(config)
    repr(config)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(ExperimentConfig().to_query())), st.text(max_size=30), max_size=6))
def test_experiment_links_with_any_text_parse_or_refuse_cleanly(query):
    try:
        config = ExperimentConfig.from_query(query)
    except ConfigError as exc:
        assert str(exc)
    else:
        assert ExperimentConfig.from_query(config.to_query()) == config


@settings(max_examples=200, deadline=None)
@given(st.recursive(NASTY, lambda inner: st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6))
def test_experiment_dicts_of_any_shape_parse_or_refuse_cleanly(value):
    try:
        ExperimentConfig.from_dict(value if not isinstance(value, dict) else {"poison": value})
    except ConfigError:
        pass


# The CLI: one bad value per option, on commands that would otherwise load data and compute.
BAD_NUMBERS = ["-1", "nan", "inf", "1e400", "abc", "99999999999999999999", "0x10"]
OPTIONS = {
    "train": ["--source", "--target", "--size", "--fraction", "--poison-seed", "--epochs", "--patience", "--batch-size", "--lr",
              "--weight-decay", "--subset", "--seed"],
    "heatmaps": ["--class", "--epsilon", "--gamma", "--threshold"],
    "spectral": ["--class", "--k", "--eigenvalues", "--clusters", "--gw-samples", "--gw-eps", "--gw-pool"],
    "detect": ["--class", "--threshold", "--eps", "--barycenter-size", "--max-iter"],
    "defend": ["--images", "--eps-linf", "--eps-l2", "--iterations", "--defense-gamma", "--theta", "--tau", "--tol", "--cost-unit"],
    "inspect": ["--test-index", "--eps", "--attack-seed", "--iterations", "--theta"],
    "export": ["--class", "--virelay-classes", "--cluster-seed"],
}


def cli_cases():
    for command, options in OPTIONS.items():
        for option in options:
            for value in BAD_NUMBERS:
                yield command, option, value


def run_cli(argv):
    from core.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse's own refusals
            code = exc.code
    return code, out.getvalue(), err.getvalue()


def test_cli_refuses_every_bad_number_before_computing_anything(seeded_cache, monkeypatch):
    """Each case must be refused: a value that slipped through would start a computation
    (and write to the cache), which the listing check below catches."""
    monkeypatch.setenv("POISONLAB_NO_PROGRESS", "1")
    before = sorted(p.name for p in seeded_cache.iterdir())
    cases = list(cli_cases())
    accepted = []
    for command, option, value in cases:
        extra = ["--csv", "/dev/null"] if command == "export" else []
        code, out, err = run_cli([command, option, value, *extra, "--epochs", "1", "--subset", "200"] if option not in ("--epochs", "--subset")
                                 else [command, option, value, *extra])
        if code == 0:
            accepted.append((command, option, value))
            continue
        assert code == 2, (command, option, value, code, err)
        assert "Traceback" not in err and err.strip(), (command, option, value, err)
        assert out == ""
    assert not accepted, "\n".join(map(str, accepted))
    assert sorted(p.name for p in seeded_cache.iterdir()) == before
    assert len(cases) >= 300
