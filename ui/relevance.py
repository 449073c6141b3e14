"""The relevance settings the Heatmaps, Spectral and GW pages share: the LRP rule, the layer at
which relevance is read, and whether only its positive part is kept; with their link fields."""

from __future__ import annotations

from typing import Dict, Tuple

import streamlit as st

from core.lrp import INPUT, RULE_NAMES, LRPConfig
from core.models import LAYER_LABELS, readout_layers
from ui.url_state import Choice

RULE_LABELS = {
    "composite": "Composite: z^B first layer, γ convolutions, ε dense",
    "epsilon": "LRP-ε",
    "gamma": "LRP-γ",
    "alpha1beta0": "LRP-α1β0",
    "squared": "Squared ε (thesis): z = x²w²",
}


def relevance_fields(prefix: str, architecture: str, default: LRPConfig = LRPConfig()) -> Dict[str, Choice]:
    """Link fields `<prefix>_rule`, `<prefix>_layer`, `<prefix>_positive`, starting at `default`; the layers are the architecture's."""
    return {f"{prefix}_rule": Choice(tuple(RULE_NAMES), default.rule),
            f"{prefix}_layer": Choice(readout_layers(architecture), default.layer if default.layer in readout_layers(architecture) else INPUT),
            f"{prefix}_positive": Choice((False, True), default.positive)}


def relevance_controls(prefix: str, architecture: str) -> Tuple[str, str, bool]:
    """The three widgets (in the current container): rule, readout layer, positive part."""
    rule = st.selectbox("LRP rule", RULE_NAMES, format_func=RULE_LABELS.get, key=f"{prefix}_rule", persist_state="session")
    layer = st.selectbox("Relevance read at", readout_layers(architecture), format_func=LAYER_LABELS.get, key=f"{prefix}_layer", persist_state="session",
                         help="At a layer, the relevance of its output is summed over its channels and brought to the 32×32 grid "
                              "(ThesisNet relu1: 12 maps of 32×32, relu2: 32 of 16×16; Inception v3 block: 256 of 32×32, relu2: 256 "
                              "of 15×15). The thesis read its heatmaps at the Inception block.")
    positive = st.checkbox("Positive relevance only", key=f"{prefix}_positive", persist_state="session",
                           help="Set negative relevance to 0 before the heatmap becomes a point cloud (the thesis's maps had none).")
    return rule, layer, positive


def relevance_query(prefix: str, lrp: LRPConfig) -> Dict[str, str]:
    """The link fields that open another view on the same heatmaps."""
    return {f"{prefix}_rule": lrp.rule, f"{prefix}_layer": lrp.layer, f"{prefix}_positive": str(lrp.positive)}
