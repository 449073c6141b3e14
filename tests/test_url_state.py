"""A view's selections in the URL: parsing is strict and clamped, and a link restores the view."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from ui.url_state import EXPERIMENT_KEYS, Choice, Number, parse_view

from apptest import open_page

SPEC = {"class": Choice(tuple(range(43)), 5), "rule": Choice(("composite", "epsilon"), "composite"),
        "k": Number(2, 50, 10, integer=True), "t": Number(0.05, 1.0, 0.99), "cls": Choice((None, 1, 2), None)}


def test_numbers_are_clamped_and_choices_must_match_exactly():
    values, problems = parse_view(SPEC, {"class": "2", "rule": "epsilon", "k": "500", "t": "-3", "cls": "None", "other": "x"})
    assert values == {"class": 2, "rule": "epsilon", "k": 50, "t": 0.05, "cls": None} and not problems
    values, problems = parse_view(SPEC, {"class": "43", "rule": "__import__('os')", "k": "nan", "t": "1e999", "cls": "2.0"})
    assert values == {} and set(problems) == {"class", "rule", "k", "t", "cls"}
    assert parse_view(SPEC, {"k": "7.6"})[0] == {"k": 8}
    assert parse_view(SPEC, {"k": "9" * 100})[1]  # refused, not parsed into a huge integer


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(SPEC)), st.text(max_size=60)))
def test_any_text_in_the_url_gives_an_allowed_value_or_a_problem_never_an_exception(query):
    values, problems = parse_view(SPEC, query)
    assert set(values) | set(problems) == set(query) and not set(values) & set(problems)
    for key, value in values.items():
        field = SPEC[key]
        if isinstance(field, Choice):
            assert value in field.options
        else:
            assert field.low <= value <= field.high and math.isfinite(value)
            assert isinstance(value, int) == field.integer


def test_a_link_restores_the_spectral_view_and_clamps_what_is_out_of_range(seeded_cache):
    query = {"pp": "0.2", "sp_class": "2", "sp_k": "500", "sp_clusters": "3", "sp_rule": "bogus", "hm_class": "7"}
    at = open_page("pages/spectral.py", query)
    assert at.session_state["sp_class"] == 2 and at.session_state["sp_k"] == 50 and at.session_state["sp_clusters"] == 3
    assert at.session_state["sp_rule"] == "composite"
    assert any("From the link: sp_rule = 'bogus' could not be used (it is not one of the choices (composite," in c.value and "so composite is shown" in c.value and "sp_k = '500' is outside 2–50, so 50 is used" in c.value for c in at.error), [c.value for c in at.error]
    params = {k: (v[0] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    assert params["sp_k"] == "50" and params["sp_class"] == "2" and params["pp"] == "0.2"
    assert "hm_class" not in params  # another view's field is dropped
    assert set(params) <= EXPERIMENT_KEYS | {"sp_class", "sp_rule", "sp_layer", "sp_positive", "sp_k", "sp_clusters", "sp_distance",
                                             "sp_embedding", "sp_colour"}


def test_a_link_carries_where_relevance_is_read_and_refuses_another_networks_layer(seeded_cache):
    at = open_page("pages/heatmaps.py", {"hm_rule": "squared", "hm_layer": "relu1", "hm_positive": "True"})
    assert (at.session_state["hm_rule"], at.session_state["hm_layer"], at.session_state["hm_positive"]) == ("squared", "relu1", True)
    params = {k: (v[0] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    assert (params["hm_layer"], params["hm_positive"]) == ("relu1", "True")
    at = open_page("pages/heatmaps.py", {"hm_layer": "inception"})  # the Inception block is not a ThesisNet layer
    assert at.session_state["hm_layer"] == "input"
    assert any("From the link: hm_layer = 'inception' could not be used" in caption.value for caption in at.error)


def test_a_link_restores_the_heatmaps_and_defense_views(seeded_cache):
    at = open_page("pages/heatmaps.py", {"hm_class": "2", "hm_rule": "epsilon", "hm_t1": "0.5"})
    assert (at.session_state["hm_class"], at.session_state["hm_rule"], at.session_state["hm_t1"]) == (2, "epsilon", 0.5)
    assert at.selectbox(key="hm_class").value == 2
    at = open_page("pages/defense.py", {"df_attack": "cw-l2", "df_eps_l2": "0.25", "df_class": "14", "df_count": "99"})
    assert at.selectbox(key="df_attack").value == "cw-l2"
    assert at.number_input(key="df_eps_l2").value == 0.25
    assert at.session_state["df_count"] == 8 and at.session_state["df_class"] == 14


def test_the_defense_class_defaults_to_any_class(seeded_cache):
    """Not None: a selectbox whose state is None shows "Choose an option" instead of "any class"."""
    at = open_page("pages/defense.py")
    assert at.session_state["df_class"] == "any"
