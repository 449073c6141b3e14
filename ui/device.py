"""The sidebar's device setting: where this session's computations run.

The choice lives in the session (and in the link as `device=`, when it is not auto); jobs carry it
into their thread, since a Streamlit session's reruns and fragments do not share one.
"""

from __future__ import annotations

from typing import Any, Callable, List

import streamlit as st
import torch

from core.device import DEVICE_ENV, DeviceConfig, describe, resolve, use_device, using
from core.errors import ConfigError

KEY = "device"


def device_options() -> List[str]:
    """auto, cpu and each CUDA GPU torch sees here."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["auto", "cpu"] + [f"cuda:{i}" for i in range(count)]


def _label(option: str) -> str:
    if option == "auto":
        try:
            return f"auto: {describe(resolve('auto'))}"
        except ConfigError:
            return f"auto (${DEVICE_ENV} is not usable)"
    return describe(resolve(option))


def session_device() -> str:
    return st.session_state.get(KEY, "auto")


def device_selector() -> None:
    """The sidebar's selector (app.py, every full run): a link's `device=` on arrival, then the session's choice."""
    options = device_options()
    linked = st.query_params.get(KEY)
    if KEY not in st.session_state:
        choice = "auto"
        if linked is not None:
            try:
                choice = DeviceConfig(linked).device
                if choice not in options:
                    raise ConfigError(f"this machine has {', '.join(options[2:]) or 'no CUDA GPU'}")
            except ConfigError as error:
                st.sidebar.error(f"From the link: device = {linked!r} could not be used ({error}), so auto is used.",
                                 icon=":material/link_off:")
                choice = "auto"
        st.session_state[KEY] = choice
    st.sidebar.selectbox("Compute on", options, key=KEY, format_func=_label,
                         help="Where training, LRP and the attacks run. Results are the same up to floating-point rounding, "
                              "so cached results are shared between devices; the Cache view says where each was computed.")
    if session_device() == "auto":
        if KEY in st.query_params:
            del st.query_params[KEY]
    elif st.query_params.get(KEY) != session_device():
        st.query_params[KEY] = session_device()


def on_session_device(work: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`work` (a job's function of its progress callback) to run on this session's device."""
    device = session_device()

    def run(progress):
        with using(device):
            return work(progress)

    return run


def apply_session_device() -> None:
    """This run's own computations on the session's device; an unusable one (a bad $POISONLAB_DEVICE)
    is said in the sidebar and the CPU is used."""
    try:
        use_device(session_device())
    except ConfigError as error:
        st.sidebar.error(f"{error}; computing on the CPU.")
        use_device("cpu")
