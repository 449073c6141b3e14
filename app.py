"""Poison Lab: entry page and navigation."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="Poison Lab", page_icon="🛑", layout="wide")


def home() -> None:
    from pages.common import active_experiment

    st.title("Poison Lab")
    st.write(
        "Poison Lab lets you poison the German Traffic Sign Recognition Benchmark with a small sticker, "
        "train a network on it and see the backdoor it learns. Explanation methods (LRP) and optimal transport "
        "then expose the poisoned samples, and a Wasserstein-barycenter defense is tested against evasion attacks. "
        "Every number here can be reproduced with `python -m core` on the command line."
    )
    config = active_experiment()
    st.subheader("Active experiment")
    st.write(config.poison.describe())
    st.json(config.to_dict(), expanded=False)
    st.page_link(POISON, label="Set up the attack and train the model", icon=":material/science:")
    st.page_link(HEATMAPS, label="See what the model looks at: LRP heatmaps and point clouds", icon=":material/blur_on:")
    st.page_link(SPECTRAL, label="Find the poisoned group: spectral analysis and baselines", icon=":material/scatter_plot:")
    st.page_link(DETECT, label="Find it with optimal transport: Gromov–Wasserstein k-means", icon=":material/hub:")
    st.page_link(DEFENSE, label="Attack the model and purify its input: the barycentric defense", icon=":material/shield:")


POISON = st.Page("pages/poison.py", title="Poison", icon=":material/science:", url_path="poison")
HEATMAPS = st.Page("pages/heatmaps.py", title="Heatmaps", icon=":material/blur_on:", url_path="heatmaps")
SPECTRAL = st.Page("pages/spectral.py", title="Spectral", icon=":material/scatter_plot:", url_path="spectral")
DETECT = st.Page("pages/detect.py", title="GW detection", icon=":material/hub:", url_path="detect")
DEFENSE = st.Page("pages/defense.py", title="Defense", icon=":material/shield:", url_path="defense")
navigation = st.navigation([st.Page(home, title="Home", icon=":material/home:", default=True), POISON, HEATMAPS, SPECTRAL, DETECT, DEFENSE])
from pages.common import mark_run_by_app  # noqa: E402

mark_run_by_app()
navigation.run()
