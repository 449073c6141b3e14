"""Every page, given bad input through Streamlit's AppTest: a link with out-of-range, non-numeric
and unknown values in each of its fields, widgets pushed past their bounds, empty selections, a
missing data folder and a damaged cached model. Each shows an error in the page (st.error),
never a traceback, and leaves no partial file in the cache.

The pages, their link fields and their widgets are read from the app itself (its pages folder,
the URL each page writes, the widgets each page draws), so a new page or field is covered too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import streamlit
from streamlit.testing.v1 import AppTest

from core.experiment import ExperimentConfig, model_path, train_or_load
from ui.url_state import EXPERIMENT_KEYS

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["home", *sorted(f"pages/{p.name}" for p in (ROOT / "pages").glob("*.py"))]
SMALL = {"subset": "1000", "epochs": "1", "patience": "1", "batch": "128", "aug": "0"}
BAD_LINK_VALUES = ("abc", "-1e12", "1e12", "nan")


def run_page(page: str, query=None, change=None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    if page != "home":
        at.switch_page(page)
    at.run()
    if change is not None:
        change(at)
        at.run()
    return at


def needs_data(page: str) -> bool:
    source = (ROOT / "app.py").read_text() if page == "home" else (ROOT / page).read_text()
    return "data_or_stop(" in source


def _shown(at: AppTest) -> str:
    return " | ".join(e.value for e in at.error)


class Tally:
    def __init__(self) -> None:
        self.cases = 0
        self.problems = []

    def check(self, label: str, at: AppTest, expect_error: bool = True, contains: str = "") -> None:
        self.cases += 1
        if at.exception:
            self.problems.append(f"{label}: traceback {at.exception[0].value[:300]}")
        elif expect_error and not any(contains in e.value for e in at.error):
            self.problems.append(f"{label}: no error{' naming ' + repr(contains) if contains else ''} (errors: {_shown(at)!r})")


@pytest.fixture
def small_model(gtsrb, seeded_cache):
    config = ExperimentConfig.from_query(SMALL)
    train_or_load(config, gtsrb)
    streamlit.cache_resource.clear()
    return model_path(gtsrb, config)


@pytest.mark.slow
def test_every_page_shows_bad_input_as_an_error_never_a_traceback(small_model, seeded_cache, monkeypatch):
    tally = Tally()
    view_fields, widgets, linked = {}, {}, []
    for page in PAGES:
        at = run_page(page, SMALL)
        tally.check(f"{page} as linked", at, expect_error=False)
        if EXPERIMENT_KEYS <= set(at.query_params):  # the pages that show an experiment carry it in the link
            linked.append(page)
        view_fields[page] = sorted(k for k in at.query_params if k not in EXPERIMENT_KEYS)
        widgets[page] = [(w.key, w.min, w.max) for w in [*at.number_input, *at.slider] if w.key and w.min is not None]
        widgets[page] += [(w.key, None, None) for w in at.multiselect if w.key]

    # Links: every field of every page, each bad value; the experiment's fields spread over the pages that show one.
    for page, fields in view_fields.items():
        for key in fields:
            for value in BAD_LINK_VALUES:
                tally.check(f"{page} ?{key}={value}", run_page(page, {**SMALL, key: value}), contains=f"{key} = ")
    experiment_keys = sorted(EXPERIMENT_KEYS)
    for i, key in enumerate(experiment_keys):
        for j, value in enumerate(BAD_LINK_VALUES):
            page = linked[(i * len(BAD_LINK_VALUES) + j) % len(linked)]
            tally.check(f"{page} ?{key}={value}", run_page(page, {**SMALL, key: value}), contains="The link's experiment could not be used")

    # Widgets: numbers past both bounds (the value used stays inside them), and empty selections.
    for page, found in widgets.items():
        for key, low, high in found:
            if low is None:
                at = run_page(page, SMALL, lambda at, key=key: at.multiselect(key=key).set_value([]))
                tally.check(f"{page} {key} emptied", at, contains="choose at least one")
                continue
            for value in (high * 10 + 1, low - 10 * (abs(low) + 1)):
                def push(at, key=key, value=value):
                    (at.number_input(key=key) if key in [w.key for w in at.number_input] else at.slider(key=key)).set_value(value)

                at = run_page(page, SMALL, push)
                tally.check(f"{page} {key} = {value}", at, expect_error=False)
                used = at.session_state[key] if key in at.session_state else None
                if used is not None and not (low <= used <= high) and not at.error:
                    tally.problems.append(f"{page} {key} = {value}: {used} was used without an error")
    for text in ("", "spin=4 scale=99"):
        at = run_page("pages/defense.py", SMALL, lambda at, text=text: at.text_input(key="df_spatial").set_value(text))
        tally.check(f"defense transformations {text!r}", at, contains="cannot be measured")

    # A damaged model: a page that reads it (on opening; Export and Home only when asked) removes it, to be
    # recomputed, and says so as an error on the next run.
    assert len(linked) >= 6, linked
    intact = small_model.read_bytes()
    read = []
    for page in PAGES:
        small_model.write_bytes(intact[: len(intact) // 2])
        streamlit.cache_resource.clear()
        at = run_page(page, SMALL, lambda at: None)
        if not small_model.exists():
            read.append(page)
        tally.check(f"{page} with a damaged model", at, expect_error=not small_model.exists(), contains="was damaged")
    assert len(read) >= 4, read
    assert not [p for p in seeded_cache.iterdir() if p.name.endswith(".tmp")], "a partial file was left"

    # No data folder: each page that needs the data says so.
    monkeypatch.setenv("GTSRB_DIR", str(seeded_cache / "no-such-gtsrb"))
    streamlit.cache_resource.clear()
    for page in PAGES:
        tally.check(f"{page} without data", run_page(page, SMALL), expect_error=needs_data(page), contains="GTSRB could not be loaded")

    print(f"{tally.cases} page cases, {len(tally.problems)} problems")
    assert tally.cases >= 300
    assert not tally.problems, f"{len(tally.problems)} of {tally.cases}:\n" + "\n".join(tally.problems[:40])
