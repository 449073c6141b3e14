"""Hover previews for Plotly scatters: the image and heatmap of the sample under the mouse.

Plotly hover labels cannot show images and `st.plotly_chart` reports no hover events to
Python, so a small component listens to the chart's `plotly_hover` events in the browser and
draws the sample's tiles from sprite sheets sent once with the page. Points carry their
sample's row in the sheets as `customdata`.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from ui.tiles import sprite_sheet

PREVIEW_JS = """
export default function(component) {
    const { data, parentElement } = component;
    const doc = parentElement.ownerDocument || document;
    const scale = data.scale, tile = data.tile;
    const sheets = data.sheets.map((s) => { const img = new Image(); img.src = s.url; return { img, label: s.label }; });
    const box = doc.createElement('div');
    box.className = 'poisonlab-hover-preview';
    box.setAttribute('data-testid', 'hover-preview');
    Object.assign(box.style, { position: 'fixed', display: 'none', zIndex: 100000, pointerEvents: 'none',
        background: 'white', border: '1px solid #cbd5e1', borderRadius: '6px', padding: '6px',
        boxShadow: '0 4px 12px rgba(0,0,0,.15)', font: '12px sans-serif', color: '#0f172a' });
    const row = doc.createElement('div');
    Object.assign(row.style, { display: 'flex', gap: '6px' });
    const canvases = sheets.map((s) => {
        const cell = doc.createElement('div');
        const canvas = doc.createElement('canvas');
        canvas.width = tile * scale; canvas.height = tile * scale;
        const label = doc.createElement('div');
        label.textContent = s.label;
        label.style.textAlign = 'center';
        cell.append(canvas, label);
        row.append(cell);
        return canvas;
    });
    const caption = doc.createElement('div');
    Object.assign(caption.style, { marginTop: '4px', whiteSpace: 'pre-line', maxWidth: (2 * tile * scale + 6) + 'px' });
    box.append(row, caption);
    doc.body.appendChild(box);

    function show(event) {
        const point = event && event.points && event.points[0];
        if (!point) return;
        const index = Array.isArray(point.customdata) ? point.customdata[0] : point.customdata;
        if (typeof index !== 'number' || index < 0 || index >= data.count) return;
        const sx = (index % data.columns) * tile, sy = Math.floor(index / data.columns) * tile;
        sheets.forEach((s, n) => {
            const ctx = canvases[n].getContext('2d');
            ctx.imageSmoothingEnabled = false;
            ctx.clearRect(0, 0, tile * scale, tile * scale);
            if (s.img.complete) ctx.drawImage(s.img, sx, sy, tile, tile, 0, 0, tile * scale, tile * scale);
        });
        caption.textContent = data.captions[index] || '';
        box.dataset.index = String(index);
        box.style.display = 'block';
        const mouse = event.event || {};
        const x = mouse.clientX || 0, y = mouse.clientY || 0;
        const w = box.offsetWidth, h = box.offsetHeight, view = doc.defaultView;
        box.style.left = Math.max(4, x + 16 + w > view.innerWidth ? x - w - 16 : x + 16) + 'px';
        box.style.top = Math.max(4, Math.min(y + 16, view.innerHeight - h - 4)) + 'px';
    }
    function hide() { box.style.display = 'none'; }

    function hook() {
        const plot = doc.querySelector('.st-key-' + data.chart_key + ' .js-plotly-plot');
        if (!plot || typeof plot.on !== 'function' || plot.__poisonlabPreview === show) return;
        if (plot.__poisonlabPreview) {
            plot.removeListener('plotly_hover', plot.__poisonlabPreview);
            plot.removeListener('plotly_unhover', plot.__poisonlabHide);
        }
        plot.on('plotly_hover', show);
        plot.on('plotly_unhover', hide);
        plot.__poisonlabPreview = show;
        plot.__poisonlabHide = hide;
        box.dataset.hooked = 'true';
    }
    hook();
    const timer = setInterval(hook, 400);  // the chart may mount after us or be re-created on a rerun
    return () => { clearInterval(timer); box.remove(); };
}
"""

_component = st.components.v2.component("poisonlab.hover_preview", js=PREVIEW_JS, isolate_styles=False)


@st.cache_data(show_spinner=False, max_entries=16)
def cached_sprite_sheet(sheet_key: str, _tiles: np.ndarray) -> tuple[str, int]:
    return sprite_sheet(_tiles)


def hover_preview(chart_key: str, sheets: dict[str, tuple[str, np.ndarray]], captions: list[str], scale: int = 4) -> None:
    """Attach previews to the `st.plotly_chart` with `key=chart_key`.

    `sheets` maps a label (e.g. "image") to (a cache key, its tiles); tile i belongs to the
    point whose customdata is i.
    """
    prepared = []
    columns = None
    tile = None
    for label, (sheet_key, tiles) in sheets.items():
        if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8 or len(tiles) != len(captions):
            raise ValueError(f"tiles of {label!r} must be uint8 [N, H, W, 3] with one caption each, got {tiles.shape} {tiles.dtype}")
        url, columns = cached_sprite_sheet(sheet_key, tiles)
        tile = int(tiles.shape[1])
        prepared.append({"url": url, "label": label})
    _component(key=f"{chart_key}_preview", height=0,
               data={"chart_key": chart_key, "sheets": prepared, "columns": columns, "tile": tile, "scale": scale,
                     "count": len(captions), "captions": captions})
