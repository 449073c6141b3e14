"""Bad input, swept: every config of the core with out-of-range, wrong-type and extreme values,
and links and experiment dicts of any shape. Each gives a ConfigError with a message, never
another exception. (The command line's cases are generated in test_cli_every_input.py.)"""

from __future__ import annotations

import dataclasses

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
