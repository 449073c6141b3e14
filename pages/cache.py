"""Cache view: the artifacts on disk (kind, parameters, size, age), and deleting some of them."""

from __future__ import annotations

import time

import streamlit as st

from core.cache import cache_dir, delete_artifacts, list_artifacts
from core.errors import PoisonLabError
from ui.common import run_through_app
from ui.url_state import restore_view


def age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


run_through_app()
restore_view({})
st.title("Cache")
st.caption(f"Everything Poison Lab computes is kept in `{cache_dir()}` and shared by the app and `python -m core`. "
           "A deleted artifact is recomputed when a view next needs it. The same list: `python -m core cache list`.")
rows = list_artifacts()
kinds = sorted({row.kind.split("-")[0] for row in rows})
chosen = st.multiselect("Kinds", kinds, kinds, key="cache_kinds",
                        help="model: trained networks · heatmaps: LRP of one class · gw/gwdist: Gromov–Wasserstein results · "
                        "adv: adversarial examples · robustness: AA/BA tables · gtsrb: the decoded data set · "
                        "partial write: left by a process that was stopped while writing")
shown = [row for row in rows if row.kind.split("-")[0] in chosen]
notice = st.empty()  # always there, so the elements below keep their places when the notice comes and goes
if rows and not chosen:
    notice.error("No kind is chosen, so no file is listed: choose at least one kind.")
now = time.time()
left, middle, right = st.columns(3)
left.metric("Files", f"{len(shown)} of {len(rows)}")
middle.metric("Size", f"{sum(row.size for row in shown) / 1e6:,.1f} MB")
right.metric("Partial writes", sum(not row.complete for row in rows))
selection = st.dataframe(
    [{"file": row.name, "kind": row.kind, "size (MB)": row.size / 1e6, "age": age(now - row.modified),
      "computed on": row.computed_on or "not recorded", "parameters": row.parameters}
     for row in shown],
    hide_index=True, on_select="rerun", selection_mode="multi-row", key="cache_table",
    column_config={"size (MB)": st.column_config.NumberColumn(format="%.2f"),
                   "parameters": st.column_config.TextColumn(width="large")},
)
picked = [shown[i].name for i in selection.selection.rows if i < len(shown)]
if picked:
    st.write(f"{len(picked)} selected ({sum(row.size for row in shown if row.name in picked) / 1e6:,.1f} MB).")
    confirm = st.checkbox("Yes, delete them", key="cache_confirm")
    if st.button("Delete the selected files", type="primary", disabled=not confirm):
        try:
            deleted = delete_artifacts(picked)
        except PoisonLabError as exc:
            st.error(str(exc))
        else:
            st.session_state.pop("cache_table", None)
            st.session_state.pop("cache_confirm", None)
            st.toast(f"Deleted {deleted} file(s).")
            st.rerun()
else:
    st.caption("Select rows (the boxes on the left of the table) to delete them.")
