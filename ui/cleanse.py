"""The cleanse-and-retrain table the detection views share: what each detector's removal does to
the model's clean accuracy and attack success rate."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from core.cleanse import cached_cleanse, cleanse_table
from core.commands import cleanse_command
from core.experiment import model_path, training_estimate
from ui.common import expected_time, job_result

LABELS = {"truth": "ground truth (upper bound)", "random": "random, as many (lower bound)", "spectral": "Euclidean spectral clustering",
          "gw": "GW k-means", "activation": "activation clustering", "signatures": "spectral signatures"}


def cleanse_section(experiment, data, methods: tuple) -> None:
    """For the target class: remove what each method flags, retrain with the same seed, and show
    clean accuracy and ASR before and after; retraining runs as a background job."""
    st.subheader("Remove what is flagged and retrain")
    st.caption("A detection is worth what it does to the model. Each method's flagged samples of the target class are removed and "
               "the model is trained again with the same seed and schedule. Ground truth removes exactly the poisoned samples; "
               "random removes as many samples of the class at random. Detectors run with their default settings.")
    rows = {method: cached_cleanse(experiment, method, data) for method in methods}
    missing = tuple(m for m in methods if rows[m] is None)
    if missing:
        seconds = training_estimate(experiment, data)
        job = job_result(f"cleanse:{model_path(data, experiment).name}:{','.join(missing)}", "Cleanse and retrain",
                         lambda progress: cleanse_table(experiment, missing, data, progress=progress),
                         f"{len(missing)} model{'s' if len(missing) > 1 else ''} to retrain: "
                         f"{expected_time(None if seconds is None else seconds * len(missing))}; detectors not yet cached come on top.",
                         f"Retrain without the flagged samples ({len(missing)} model{'s' if len(missing) > 1 else ''})")
        if job is not None:
            rows.update({row["method"]: row for row in job})
    done = [rows[m] for m in methods if rows[m] is not None]
    if done:
        table = pd.DataFrame([{"method": LABELS[r["method"]], "removed": r["removed"], "of them poisoned": r["removed_poisoned"],
                               "poisoned left": r["poisoned_left"], "clean acc. before (%)": 100 * r["clean_accuracy_before"],
                               "clean acc. after (%)": 100 * r["clean_accuracy"], "ASR before (%)": 100 * r["attack_success_rate_before"],
                               "ASR after (%)": 100 * r["attack_success_rate"]} for r in done])
        st.dataframe(table, hide_index=True, column_config={c: st.column_config.NumberColumn(format="%.1f") for c in table if "(%)" in c})
    st.code(cleanse_command(experiment, methods), language="bash")


