"""Benchmark: the server time of each interaction an analyst makes while tuning by hand, on the
default experiment (its model and class-5 heatmaps must be cached: `python -m core heatmaps`).

    GTSRB_DIR=../shared/data/gtsrb python bench/views.py [--repeats N] [--only PAGE ...]

Each page runs in Streamlit's AppTest, which executes the page script as the server would (no
browser), so the time of `run()` is the server time of one interaction. An interaction is a
change of one widget; it is timed from the second time onwards (warm: the page's caches filled
by the first), the median of N back-and-forth changes. The reference is a plain rerun of the same
page with nothing changed, measured in the same run: the ratio says how much of an interaction is
the page's fixed cost. The target is 1 s per warm interaction on a 2-core AVX2 CPU.

AppTest reruns the whole page on every change, so it does not see the sections that rerun alone
(Streamlit fragments: the Heatmaps sample and clouds, the Spectral embedding). `--browser` measures
those end to end in headless Chromium against a server started here: from the key press or click
to the redrawn figure. Its reference is a full rerun of the same page in the same browser (the
app's "Rerun"), timed to the end of the run. `--busy` keeps both cores busy with a second process
(float32 matrix products), as when a training runs beside the app.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Dict, List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from streamlit.testing.v1 import AppTest  # noqa: E402

from core.options import OneLineParser, run_script, whole  # noqa: E402
from core.arithmetic import describe_machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 1.0


def open_page(page: str, query: Dict[str, str]) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=900)
    for key, value in query.items():
        at.query_params[key] = value
    at.switch_page(page)
    at.run()
    if at.exception:
        raise SystemExit(f"{page}: {at.exception[0].message}")
    return at


def timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def widget(at: AppTest, key: str):
    for kind in ("slider", "select_slider", "selectbox", "radio", "number_input", "checkbox", "toggle"):
        try:
            return getattr(at, kind)(key=key)
        except KeyError:
            continue
    raise SystemExit(f"no widget with key {key!r} on this page")


def interaction(at: AppTest, key: str, values: Tuple, repeats: int) -> Tuple[float, float]:
    """(first change, median of the warm changes) in seconds, alternating between `values`."""
    first = timed(lambda: widget(at, key).set_value(values[1]).run())
    warm = []
    for i in range(repeats):
        value = values[i % 2]
        warm.append(timed(lambda: widget(at, key).set_value(value).run()))
        if at.exception:
            raise SystemExit(f"{key}: {at.exception[0].message}")
    return first, statistics.median(warm)


# page → interactions: (label, widget key, (back, forth) values)
INTERACTIONS: Dict[str, List[Tuple[str, str, Tuple]]] = {
    "pages/heatmaps.py": [
        ("threshold t (left)", "hm_t1", (0.99, 0.90)),
        ("threshold t (right)", "hm_t2", (0.5, 0.4)),
        ("sample", "hm_position", (1, 2)),
        ("filter", "hm_filter", ("all", "poisoned")),
        ("sort", "hm_sort", ("lowest first", "highest first")),
    ],
    "pages/spectral.py": [
        ("colour", "sp_colour", ("cluster", "ground truth")),
        ("number of clusters", "sp_clusters", (2, 3)),
        ("neighbours k", "sp_k", (10, 11)),
        ("embedding: t-SNE", "sp_embedding", ("spectral", "tsne")),
        ("embedding: UMAP", "sp_embedding", ("spectral", "umap")),
    ],
    "pages/detect.py": [
        ("mass threshold t", "gw_threshold", (0.99, 0.95)),
    ],
    "pages/defense.py": [
        ("attack", "df_attack", ("fgsm", "pgd-linf")),
        ("budget", "df_eps_linf", (8.0, 4.0)),
        ("marginals", "df_marginals", ("B6", "B4")),
    ],
}


BUSY_LOOP = ("import torch\ntorch.set_num_threads(2)\na = torch.randn(1024, 1024)\n"
             "while True:\n    a = torch.tanh(a @ a / 32)\n")
CHROMIUM = "/usr/bin/chromium"


def start_server() -> Tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true"],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
            return process, url
        except OSError:
            time.sleep(0.3)
    process.kill()
    raise SystemExit("streamlit did not start")


def browser_table(repeats: int) -> None:
    """End-to-end times in Chromium: interaction → redrawn figure, against a full rerun of the page."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=300_000)
    process, url = start_server()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            app = page.get_by_test_id("stApp")

            def settle() -> None:
                expect(app).to_have_attribute("data-test-script-state", "notRunning")

            def full_rerun() -> float:
                page.evaluate("() => document.activeElement && document.activeElement.blur()")  # "r" reruns unless a widget has focus
                start = time.perf_counter()
                page.keyboard.press("r")
                expect(app).to_have_attribute("data-test-script-state", "running")
                settle()
                return time.perf_counter() - start

            def row(name: str, label: str, times: List[float], rerun: float) -> None:
                warm = statistics.median(times)
                print(f"{name:10s} {label:22s} {warm:8.2f} {rerun:8.2f} {warm / rerun:10.2f}", flush=True)

            print(f"{'page':10s} {'interaction (browser)':22s} {'warm s':>8s} {'rerun s':>8s} {'warm/rerun':>10s}")
            page.goto(f"{url}/heatmaps")
            expect(page.get_by_text("Training image #")).to_be_visible()
            settle()
            rerun = statistics.median(full_rerun() for _ in range(repeats))
            clouds = page.locator(".js-plotly-plot").filter(has_text="Point clouds")
            left = page.get_by_role("slider", name="Mass threshold t (left cloud)")
            times = []
            for i in range(repeats + 1):
                target = f"t = {float(left.get_attribute('aria-valuetext')) + (0.01 if i % 2 else -0.01):.2f}: "
                left.focus()
                start = time.perf_counter()
                page.keyboard.press("ArrowRight" if i % 2 else "ArrowLeft")
                expect(clouds.filter(has_text=target)).to_have_count(1)
                times.append(time.perf_counter() - start)
                settle()
            row("heatmaps", "threshold t (left)", times[1:], rerun)
            caption, sample = page.get_by_text("Training image #"), page.get_by_role("slider", name="Sample")
            times = []
            for i in range(repeats + 1):
                before = caption.inner_text()
                sample.focus()
                start = time.perf_counter()
                page.keyboard.press("ArrowLeft" if i % 2 else "ArrowRight")
                expect(caption).not_to_have_text(before)
                times.append(time.perf_counter() - start)
                settle()
            row("heatmaps", "sample", times[1:], rerun)

            page.goto(f"{url}/spectral")
            expect(page.get_by_text("Eigengap suggests")).to_be_visible()
            settle()
            rerun = statistics.median(full_rerun() for _ in range(repeats))
            scatter = page.locator(".js-plotly-plot").filter(has_text="The class's samples")
            for label, group, options, shows in (
                ("colour", "Colour by", ("ground truth", "cluster"), ("poisoned (", "cluster 0")),
                ("embedding", "Embedding", ("t-SNE of the heatmaps", "Spectral (eigenvectors 2 and 3)"),
                 ("t-SNE of the heatmaps (", "Spectral (eigenvectors 2 and 3) (")),
            ):
                times = []
                for i in range(repeats + 1):
                    start = time.perf_counter()
                    page.get_by_role("radiogroup", name=group).get_by_text(options[i % 2], exact=True).click()
                    expect(scatter.filter(has_text=shows[i % 2])).to_have_count(1)
                    times.append(time.perf_counter() - start)
                    settle()
                row("spectral", label, times[1:], rerun)  # the first t-SNE may be fitted: left out
            browser.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> None:
    parser = OneLineParser(prog=f"python bench/{Path(__file__).name}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=whole(1, 100), default=4, help="warm changes per interaction (default 4)")
    parser.add_argument("--only", nargs="*", default=None, help="page names, e.g. heatmaps spectral")
    parser.add_argument("--browser", action="store_true", help="also measure end to end in headless Chromium (needs /usr/bin/chromium)")
    parser.add_argument("--busy", action="store_true", help="keep both cores busy with a second process while measuring")
    args = parser.parse_args()
    if not os.environ.get("GTSRB_DIR"):
        parser.error("GTSRB_DIR is not set: set it to the folder that holds GTSRB")
    print(f"machine: {describe_machine()}")
    busy = subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) if args.busy else None
    print("load: " + ("a second process keeps both cores busy" if busy else "none besides this benchmark"))
    try:
        apptest_table(args)
        if args.browser:
            browser_table(args.repeats)
    finally:
        if busy is not None:
            busy.kill()


def apptest_table(args) -> None:
    print(f"{'page':10s} {'interaction':22s} {'first s':>8s} {'warm s':>8s} {'rerun s':>8s} {'warm/rerun':>10s} {'≤ 1 s':>6s}")
    for page, items in INTERACTIONS.items():
        name = Path(page).stem
        if args.only and name not in args.only:
            continue
        at = open_page(page, {})
        rerun = statistics.median(timed(at.run) for _ in range(args.repeats))
        for label, key, values in items:
            first, warm = interaction(at, key, values, args.repeats)
            ok = "yes" if warm <= TARGET_SECONDS else "no"
            print(f"{name:10s} {label:22s} {first:8.2f} {warm:8.2f} {rerun:8.2f} {warm / rerun:10.1f} {ok:>6s}", flush=True)
            widget(at, key).set_value(values[0]).run()


if __name__ == "__main__":
    raise SystemExit(run_script(main))
