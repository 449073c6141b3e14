"""What every page shares: the active experiment (session state + URL), the data, job progress."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from typing import Optional

import streamlit as st

from core.data import ENV_VAR, GTSRB, NotCached, load_gtsrb
from core.errors import ConfigError, PoisonLabError
from core.experiment import ExperimentConfig, load_trained
from core.heatmaps import ClassHeatmaps, experiment_heatmaps_path, model_heatmaps
from core.jobs import RUNNER, Job
from core.lrp import LRPConfig
from ui.relevance import relevance_query
from core.cache import WAITING, locked_elsewhere, progress_elsewhere
from core.progress import approximate_duration, time_left_text
from ui.url_state import write_experiment_query

_EXPERIMENT = "active_experiment"
_VIA_APP = "page_run_by_app"


def mark_run_by_app() -> None:
    """Called by app.py before it runs the selected page."""
    st.session_state[_VIA_APP] = True


def run_through_app() -> None:
    """Rerun once through app.py if this page was started without it.

    Streamlit decides once per server whether `pages/` is a classic multipage folder; if
    the very first request opens a page URL, it runs that page file directly (no
    navigation, no page config) and keeps doing so until someone opens the home page.
    Clearing that decision and rerunning sends this and every later run through app.py,
    whose `st.navigation` then resolves the same URL.
    """
    if not st.session_state.get(_VIA_APP) and not st.session_state.get("page_rerun_for_app"):
        from streamlit.runtime.pages_manager import PagesManager

        PagesManager.uses_pages_directory = False
        st.session_state["page_rerun_for_app"] = True
        st.rerun()


UNMEASURED = "not yet measured on this CPU; once it runs, the bar shows the time left"


def expected_time(seconds: Optional[float]) -> str:
    """An estimate measured on this CPU (core.durations) in words, or UNMEASURED."""
    return UNMEASURED if seconds is None else f"{approximate_duration(seconds)} on this CPU (as measured here)"


def training_time(config: ExperimentConfig, data: GTSRB) -> str:
    """How long training `config` takes here, all epochs counted (early stopping may end it sooner)."""
    from core.experiment import training_estimate

    seconds = training_estimate(config, data)
    return expected_time(seconds) + ("" if seconds is None else f" for all {config.train.max_epochs} epochs")


def view_links(experiment: ExperimentConfig, links) -> None:
    """Links to the next views, carrying the experiment and the selections they share with this one."""
    st.divider()
    for column, (path, label, icon, fields) in zip(st.columns(len(links)), links):
        column.page_link(path, label=label, icon=icon, query_params={**experiment.to_query(), **{k: str(v) for k, v in fields.items()}})


def report_damaged_artifacts() -> None:
    """A damaged cache file is removed and recomputed, never shown: say so once per session."""
    from core.cache import DAMAGED

    seen = st.session_state.setdefault("damaged_seen", time.time())
    for when, name in list(DAMAGED):
        if when > seen:
            st.error(f"The cached file {name} was damaged or incomplete. It was removed and is recomputed when needed.",
                     icon=":material/healing:")
            seen = when
    st.session_state["damaged_seen"] = seen


def active_experiment() -> ExperimentConfig:
    """The session's experiment; on a fresh session, the one in the URL (or the thesis defaults)."""
    report_damaged_artifacts()
    if _EXPERIMENT not in st.session_state:
        config = ExperimentConfig()
        if st.query_params:
            try:
                config = ExperimentConfig.from_query(st.query_params.to_dict())
            except ConfigError as exc:
                st.error(f"The link's experiment could not be used ({exc}); showing the thesis defaults.", icon=":material/link_off:")
        st.session_state[_EXPERIMENT] = config
    config = st.session_state[_EXPERIMENT]
    _write_query(config)
    return config


def set_active_experiment(config: ExperimentConfig) -> None:
    st.session_state[_EXPERIMENT] = config
    _write_query(config)


def experiment_scale_note(config: ExperimentConfig, data_size: Optional[int] = None) -> None:
    """Say whether the active experiment is reduced, and offer the other scale in one click."""
    from core.commands import train_command
    from core.experiment import QUICK_TRAINING, full_experiment, is_reduced, quick_experiment

    if is_reduced(config):
        of = f" of {data_size:,}" if data_size else ""
        box = st.info if config == quick_experiment(config) else st.warning
        box(f"**Reduced experiment:** the model trains on {config.train.subset:,}{of} training images for at most "
            f"{config.train.max_epochs} epochs, so its accuracy, the attack's success and the detection scores are lower "
            "than the thesis's. The full experiment trains on every image; on the command line: "
            f"`{train_command(full_experiment(config))}`.", icon=":material/speed:")
        if st.button("Switch to the full experiment", key="scale_full"):
            set_active_experiment(full_experiment(config))
            st.rerun()
    else:
        left, right = st.columns([3, 1], vertical_alignment="center")
        left.caption(f"For a first look or a live demo, the quick experiment trains the same attack on {QUICK_TRAINING['subset']:,} "
                     f"images for {QUICK_TRAINING['max_epochs']} epochs, in a fraction of the full training's time, and still "
                     "shows the whole story.")
        if right.button("Quick experiment", key="scale_quick", icon=":material/speed:"):
            set_active_experiment(quick_experiment(config))
            st.rerun()


def _write_query(config: ExperimentConfig) -> None:
    write_experiment_query(config.to_query())


@st.cache_data(show_spinner="Running the baselines…", max_entries=4)
def cached_baselines(model_file: str, class_id: int, seed: int, _experiment: ExperimentConfig, _data):
    """Activation clustering, spectral signatures and raw-image clustering, shared by the detection
    pages; the model's file name stands for the experiment (its hash covers data, attack and training)."""
    from core.detectors import baseline_scores

    return baseline_scores(_experiment, class_id, _data, seed=seed)


@st.cache_data(show_spinner=False, max_entries=8)
def cached_detection(key: tuple, _step):
    """A detection step's outcome, once per session for the settings `key` names (the artifact
    it reads and its configuration): `_step` calls the core step."""
    return _step()


def heatmaps_or_stop(data: GTSRB, experiment: ExperimentConfig, class_id: int, lrp) -> str:
    """The file name of the class's cached heatmaps; without them, a link to the Heatmaps page
    (the script stops here)."""
    path = experiment_heatmaps_path(experiment, class_id, lrp, data)
    if load_trained(data, experiment) is None or not path.is_file():
        st.info(f"The heatmaps of class {class_id} ({lrp.describe()}) are not computed yet: compute them on the Heatmaps page first.")
        st.page_link("pages/heatmaps.py", label=f"Compute them on the Heatmaps page (class {class_id}, {lrp.short_name})", icon=":material/blur_on:",
                     query_params={**experiment.to_query(), "hm_class": str(class_id), **relevance_query("hm", lrp)})
        st.stop()
    return path.name


def computed_heatmaps(experiment: ExperimentConfig, class_id: int, lrp: LRPConfig, data: GTSRB) -> Optional[ClassHeatmaps]:
    """The class's heatmaps once they are computed, else None: a page shows them and leaves training
    and LRP to a job with a progress bar. Kept in memory per file, as every widget reruns the page."""
    trained = load_trained(data, experiment)
    path = experiment_heatmaps_path(experiment, class_id, lrp, data)
    if trained is None or not path.is_file():
        return None
    return _heatmaps_in_memory(path.name, lambda: model_heatmaps(trained, experiment, class_id, lrp, data))


@st.cache_resource(show_spinner=False, max_entries=4)
def _heatmaps_in_memory(path_name: str, _loader) -> ClassHeatmaps:
    return _loader()


def gtsrb_root() -> Optional[str]:
    return st.session_state.get("gtsrb_dir") or os.environ.get(ENV_VAR)


def data_or_stop() -> GTSRB:
    """The decoded data set; decoding (first run only) happens in a job with a progress bar."""
    root = gtsrb_root()
    key = f"data:{root}"
    job = RUNNER.get(key)
    if job is None or job.state in ("failed", "cancelled"):
        if job is not None:
            RUNNER.forget(key)
        try:
            return _data_from_cache(root)
        except NotCached:
            job = RUNNER.submit(key, "Decoding GTSRB", lambda progress: load_gtsrb(root, progress=progress))
        except PoisonLabError as exc:
            _data_missing(str(exc))
            st.stop()
    if job.state == "done":
        RUNNER.forget(key)
        return _data_from_cache(root)
    if job.state in ("failed", "cancelled"):
        _data_missing(job.error or "unknown error")
        st.stop()
    from core.data import DECODE_STEP
    from core.durations import estimate

    follow_job(key, f"GTSRB is decoded once and cached on disk: {expected_time(estimate(DECODE_STEP))}.")
    st.stop()


@st.cache_resource(show_spinner=False, max_entries=2)
def _data_from_cache(root: Optional[str]) -> GTSRB:
    return load_gtsrb(root, decode=False)


def _data_missing(message: str) -> None:
    st.error(f"GTSRB could not be loaded: {message}")
    with st.expander("Download the official GTSRB release (needs internet, about 360 MB)"):
        dest = st.text_input("Download into folder", value=os.path.expanduser("~/gtsrb"))
        if st.button("Download and verify"):
            from core.download import download_official

            RUNNER.submit(f"download:{dest}", "Downloading GTSRB", lambda progress: download_official(dest, progress=progress))
        job = RUNNER.get(f"download:{dest}")
        if job is not None and job.state == "done":
            st.session_state["gtsrb_dir"] = str(job.result)
            st.success(f"Downloaded to {job.result}. Set {ENV_VAR}={job.result} for the CLI; this session uses it now.")
            st.button("Continue")
        elif job is not None:
            follow_job(job.key, "")


def settle_job(key: str, label: str, note: str) -> None:
    """For an artifact that is not on disk yet: report its job's failure, or follow the running
    job, here or in another process (the script stops here), or rerun once a finished job's
    artifact can be read."""
    job = RUNNER.get(key)
    if job is None:
        if locked_elsewhere(key):
            follow_elsewhere(key, label)
            st.stop()
        return
    if job.state in ("failed", "cancelled"):
        st.error(f"{label} failed: {job.error}")
        RUNNER.forget(key)
    elif job.active:
        follow_job(key, note)
        st.stop()
    else:
        RUNNER.forget(key)
        st.rerun()


def job_result(key: str, title: str, work, note: str, button: str):
    """The finished job's result; otherwise the running job's progress, or a start button.
    Never stops the script, so the rest of the page (other tabs, other sections) still renders."""
    job = RUNNER.get(key)
    if job is not None and job.state == "done":
        return job.result
    if job is not None and job.active:
        follow_job(key, note)
        return None
    if job is not None:
        (st.info if job.state == "cancelled" else st.error)(f"{title} {job.state}: {job.error}")
        RUNNER.forget(key)
    if st.button(button, key=f"button:{key}"):
        from ui.device import on_session_device

        RUNNER.submit(key, title, on_session_device(work))
        st.rerun()
    return None


def follow_elsewhere(key: str, label: str) -> None:
    """Poll the progress of a computation another process (the CLI, another server) holds the lock
    of; rerun the page when it lets go."""

    @st.fragment(run_every=1.0)
    def poll() -> None:
        computing = progress_elsewhere(key)
        if computing is None:
            st.rerun()
        event = computing.progress
        who = "another process" if computing.pid is None else f"process {computing.pid}"
        since = "" if computing.started is None else f" (for {approximate_duration(time.time() - computing.started).removeprefix('about ')})"
        st.progress(0.0 if event is None else event.fraction,
                    text=f"{label} is running in {who}{since}: {event.message if event and event.message else 'starting…'}")
        st.caption("Another process (the command line or another server) is computing this; the page shows it when it is done. "
                   "Starting it here as well would only wait for that process.")

    poll()


def follow_job(key: str, note: str) -> None:
    """Poll a job's progress every second; rerun the page when it ends."""

    @st.fragment(run_every=1.0)
    def poll() -> None:
        job: Optional[Job] = RUNNER.get(key)
        if job is None:
            return
        if not job.active:
            st.rerun()
        event = job.progress
        if event is not None and event.message == WAITING:  # the lock is held elsewhere: show that process's progress
            computing = progress_elsewhere(key)
            if computing is not None and computing.progress is not None:
                event = replace(computing.progress, message=f"waiting for process {computing.pid}, which is at: {computing.progress.message}")
        fraction = event.fraction if event else 0.0
        text = f"{job.title}: {event.message}" if event and event.message else f"{job.title}: starting…"
        remaining = time_left_text(job.seconds_left())
        if remaining:
            text = f"{text} — {remaining}"
        left, right = st.columns([6, 1], vertical_alignment="bottom")
        left.progress(fraction, text=text)
        if right.button("Cancel", key=f"cancel:{key}", disabled=job.cancel_requested,
                        help="Stops the job at its next progress step; nothing partial is kept."):
            RUNNER.cancel(key)
        if note:
            st.caption(note)

    poll()
