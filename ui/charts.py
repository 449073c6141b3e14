"""Plotly figures that more than one detection page draws."""

from __future__ import annotations

import plotly.graph_objects as go


def confusion_chart(score, title: str, colorscale: str = "Blues") -> go.Figure:
    """(tn, fp / fn, tp) of a detector, with "poisoned" as the positive class."""
    z = [[score.tn, score.fp], [score.fn, score.tp]]
    fig = go.Figure(go.Heatmap(z=z, x=["flagged clean", "flagged poisoned"], y=["truly clean", "truly poisoned"], colorscale=colorscale,
                               text=[[str(v) for v in row] for row in z], texttemplate="%{text}", showscale=False,
                               hovertemplate="%{y}, %{x}: %{z}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(height=300, margin=dict(l=0, r=0, t=40, b=0), title=dict(text=title, font=dict(size=14)))
    return fig
