"""A view's main selections in the URL, so that a copied link opens the same view.

Each page declares its fields (widget key → what values it takes). Before its widgets (and
after `active_experiment`, which puts the experiment in the URL) the page calls `restore_view`: a widget the session has not set yet takes its value from the
URL (a copied link, or a link from another view), else from the session's memory of this
view (the sidebar's page menu drops the URL's fields), else its default; on arriving from another
page, the link's values win over the session's. After the widgets,
`remember_view` writes the values back to the URL and to that memory (so a view survives a
visit to another page). URL values are parsed as plain text against the declared options
or ranges: a number is clamped into its range, an unknown option is dropped, each with an error note;
nothing from a URL is evaluated or unpickled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Tuple, Union

import streamlit as st

from core.experiment import ExperimentConfig

_MEMORY = "view_memory"
_LAST_VIEW = "view_last"
EXPERIMENT_KEYS = frozenset(ExperimentConfig().to_query())
SESSION_KEYS = frozenset({"device"})
"""Link keys of the whole session (the sidebar's device), kept on every view."""


@dataclass(frozen=True)
class Choice:
    """One of a fixed list of options (compared by their text form)."""

    options: Tuple[Any, ...]
    default: Any

    def parse(self, text: str) -> Any:
        for option in self.options:
            if str(option) == text:
                return option
        shown = ", ".join(str(o) for o in self.options[:6]) + (", …" if len(self.options) > 6 else "")
        raise ValueError(f"it is not one of the choices ({shown})")

    def text(self, value: Any) -> str:
        return str(value)


@dataclass(frozen=True)
class Number:
    """A whole or real number, clamped into [low, high]; `step` rounds it onto the widget's grid."""

    low: float
    high: float
    default: float
    integer: bool = False

    def parse(self, text: str) -> Union[int, float]:
        if len(text) > 40:
            raise ValueError("it is too long for a number")
        try:
            value = float(text)
        except ValueError:
            raise ValueError("it is not a number") from None
        if not math.isfinite(value):
            raise ValueError("it is not a finite number")
        value = min(max(value, self.low), self.high)
        return int(round(value)) if self.integer else float(value)

    def text(self, value: Any) -> str:
        return str(int(value)) if self.integer else repr(float(value))

    @property
    def bounds(self) -> Tuple[Union[int, float], Union[int, float]]:
        """(low, high) for the widget, so that the widget and the link share one range."""
        return (int(self.low), int(self.high)) if self.integer else (float(self.low), float(self.high))


Field = Union[Choice, Number]


def parse_view(spec: Mapping[str, Field], query: Mapping[str, str]) -> Tuple[Dict[str, Any], Dict[str, str]]:
    """Values of the fields present in `query`, and the problems of those that could not be used."""
    values, problems = {}, {}
    for key, field in spec.items():
        if key not in query:
            continue
        try:
            values[key] = field.parse(str(query[key]))
        except ValueError as exc:
            problems[key] = str(exc)
    return values, problems


def _entered(view: Tuple[str, ...]) -> bool:
    """Whether this run shows `view` after a run that showed another one."""
    arrived = st.session_state.get(_LAST_VIEW) != view
    st.session_state[_LAST_VIEW] = view
    return arrived


def restore_view(spec: Mapping[str, Field]) -> None:
    """Before the page's widgets (after `active_experiment`): give each declared widget its
    remembered, linked or default value, and drop other views' fields from the URL."""
    for key in list(st.query_params):
        if key not in EXPERIMENT_KEYS and key not in spec and key not in SESSION_KEYS:
            del st.query_params[key]
    memory = st.session_state.setdefault(_MEMORY, {})
    linked, problems = parse_view(spec, {k: st.query_params[k] for k in st.query_params if k in spec})
    arrived = _entered(tuple(spec))
    for key, field in spec.items():
        if key in st.session_state and not (arrived and key in linked):
            continue
        if key in linked:
            st.session_state[key] = linked[key]
        elif key in memory:
            st.session_state[key] = memory[key]
        else:
            st.session_state[key] = field.default
    notes = [f"{key} = {_shown(st.query_params[key])} could not be used ({problem}), so {spec[key].text(st.session_state[key])} is shown"
             for key, problem in problems.items()]
    notes += [f"{key} = {_shown(st.query_params[key])} is outside {spec[key].low:g}–{spec[key].high:g}, so {spec[key].text(value)} is used"
              for key, value in linked.items() if _clamped(spec[key], st.query_params[key], value)]
    if notes:
        st.error("From the link: " + "; ".join(notes) + ".", icon=":material/link_off:")


def _shown(text: str) -> str:
    return repr(text if len(text) <= 30 else text[:30] + "…")


def _clamped(field: Field, text: str, value: Any) -> bool:
    """Whether a linked number was moved into its range (rounding onto whole numbers is not a clamp)."""
    if not isinstance(field, Number):
        return False
    return not field.low <= float(text) <= field.high


def remember_view(spec: Mapping[str, Field]) -> None:
    """After the widgets (call again after later widget groups): their values into the URL and memory."""
    memory = st.session_state.setdefault(_MEMORY, {})
    for key, field in spec.items():
        if key in st.session_state:
            value = st.session_state[key]
            memory[key] = value
            text = field.text(value)
            if st.query_params.get(key) != text:
                st.query_params[key] = text


def write_experiment_query(query: Mapping[str, str]) -> None:
    """Put the experiment's parameters in the URL, leaving the view's fields to `restore_view`."""
    for key, text in query.items():
        if st.query_params.get(key) != text:
            st.query_params[key] = text
