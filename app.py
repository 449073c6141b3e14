"""Poison Lab: entry page and navigation."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="Poison Lab", page_icon="🛑", layout="wide")


STATE_BADGES = {"cached": ":green-badge[:material/check: cached]", "running": ":orange-badge[:material/progress_activity: running]",
                "ready": ":blue-badge[:material/bolt: ready]", "not yet computed": ":gray-badge[not yet computed]"}


STATE_COLOURS = {"cached": "#bbf7d0", "running": "#fed7aa", "ready": "#bfdbfe", "not yet computed": "#e5e7eb"}


def pipeline_diagram(steps) -> str:
    """The steps as a left-to-right graph, each box coloured by its state (Graphviz DOT)."""
    nodes = "\n".join(f'  s{i} [label="{i + 1}. {step.name}\\n{step.state}", fillcolor="{STATE_COLOURS[step.state]}"];'
                      for i, step in enumerate(steps))
    edges = " -> ".join(f"s{i}" for i in range(len(steps)))
    return ("digraph pipeline {\n  rankdir=LR; bgcolor=transparent;\n"
            '  node [shape=box, style="rounded,filled", fontname="sans-serif", fontsize=11, color="#9ca3af"];\n'
            f"{nodes}\n  {edges};\n}}")


def home() -> None:
    from core.params import parameter_rows
    from core.pipeline import pipeline_status
    from ui.common import active_experiment, data_or_stop, experiment_scale_note
    from ui.url_state import restore_view

    st.title("Poison Lab")
    st.write(
        "Poison Lab poisons the German Traffic Sign Recognition Benchmark with a small sticker and trains a network "
        "that learns the backdoor. LRP heatmaps and optimal transport then show which training samples were poisoned, "
        "and a Wasserstein-barycenter defense is tested against evasion attacks. "
        "Every number here can be reproduced with `python -m core` on the command line."
    )
    config = active_experiment()
    restore_view({})
    data = data_or_stop()
    experiment_scale_note(config, len(data.train))
    st.subheader("The pipeline for the active experiment")
    steps = pipeline_status(config, data)
    st.graphviz_chart(pipeline_diagram(steps), width="content")
    for row in (steps[:3], steps[3:]):
        for column, step in zip(st.columns(3), row):
            number = steps.index(step) + 1
            with column.container(border=True):
                st.markdown(f"**{number}. {step.name}**  \n{STATE_BADGES[step.state]}")
                st.caption(step.detail)
                st.page_link(PAGES[step.page], label=f"Open {PAGES[step.page].title}", icon=":material/arrow_forward:",
                             query_params=config.to_query())
    st.caption("cached: on disk, shown at once · running: a job is computing it (here, in another session or another "
               "process) · ready: computed on the page from cached inputs · not yet computed: its page has the button. "
               "The steps use each view's default settings for the target class.")
    st.subheader("Active experiment")
    st.write(config.poison.describe())
    rows = parameter_rows(config)
    st.dataframe(rows, hide_index=True, width=520, height=35 * (len(rows) + 1) + 3)
    st.caption("Change it on the Poison page; the link in the address bar carries it, so a copied link opens the same experiment.")
    st.page_link(EXPORT, label="Take the results away: CSV, JSON and a ViRelAy project", icon=":material/download:",
                 query_params=config.to_query())
    st.page_link(CACHE, label="See and clean what is cached on disk", icon=":material/storage:", query_params=config.to_query())


POISON = st.Page("pages/poison.py", title="Poison", icon=":material/science:", url_path="poison")
HEATMAPS = st.Page("pages/heatmaps.py", title="Heatmaps", icon=":material/blur_on:", url_path="heatmaps")
SPECTRAL = st.Page("pages/spectral.py", title="Spectral", icon=":material/scatter_plot:", url_path="spectral")
DETECT = st.Page("pages/detect.py", title="GW detection", icon=":material/hub:", url_path="detect")
DEFENSE = st.Page("pages/defense.py", title="Defense", icon=":material/shield:", url_path="defense")
EXPORT = st.Page("pages/export.py", title="Export", icon=":material/download:", url_path="export")
STUDY = st.Page("pages/study.py", title="Studies", icon=":material/grid_view:", url_path="study")
CACHE = st.Page("pages/cache.py", title="Cache", icon=":material/storage:", url_path="cache")
PAGES = {"poison": POISON, "heatmaps": HEATMAPS, "spectral": SPECTRAL, "detect": DETECT, "defense": DEFENSE, "export": EXPORT,
         "study": STUDY, "cache": CACHE}
navigation = st.navigation([st.Page(home, title="Home", icon=":material/home:", default=True), *PAGES.values()])
from ui.common import mark_run_by_app  # noqa: E402

from ui.device import apply_session_device, device_selector  # noqa: E402

mark_run_by_app()
device_selector()
apply_session_device()  # what this run computes itself; jobs carry the choice into their thread
navigation.run()
