"""Real-browser test: a freshly started server, opened at a page URL, in headless Chromium.

It checks what AppTest cannot: that a deep link into a page on a new server gets the app's
navigation (not Streamlit's classic `pages/` listing), and that the Plotly figures render.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import pytest

from core.detectors import experiment_gw
from core.experiment import ExperimentConfig, poisoned_data, train_or_load
from core.gw_kmeans import GWConfig
from core.presets import GW_RELEVANCE
from core.heatmaps import class_heatmaps
from core.lrp import LRPConfig

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
SMALL = {"subset": "3000", "epochs": "2", "patience": "2"}
GW_QUICK = GWConfig(threshold=0.5, epsilon=0.05, epsilon_init=0.05, max_iter=2)
SERVER = {}  # the module server's cache folder and log file
SCREENSHOTS = Path(os.environ.get("POISONLAB_TEST_ARTIFACTS", ROOT / "test-artifacts")) / "screenshots"

if not Path(CHROMIUM).exists():
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium for the browser tests")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import expect, sync_playwright  # noqa: E402

# A page draws its parts one after another; on a busy 2-core CPU a chart can follow the text
# above it by more than Playwright's default 5 s, so an assertion waits up to 30 s unless told.
expect.set_options(timeout=30_000)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory, gtsrb_cache_file, gtsrb):
    cache = tmp_path_factory.mktemp("browser-cache")
    os.link(gtsrb_cache_file, cache / gtsrb_cache_file.name)
    previous = os.environ.get("POISONLAB_CACHE")
    os.environ["POISONLAB_CACHE"] = str(cache)
    try:  # the small experiment's model and heatmaps, so the page has something to show
        config = ExperimentConfig.from_query(SMALL)
        trained = train_or_load(config, gtsrb)
        train = poisoned_data(gtsrb, config).train
        for class_id in (5, 2):  # the target, and the source class, which has no poisoned sample
            class_heatmaps(trained.model, trained.path.name, train.images, train.labels, train.poison_mask, class_id, LRPConfig())
        # A quick GW k-means result on the GW page's own heatmaps (its defaults would take a minute on this class).
        experiment_gw(config, 5, GW_RELEVANCE, GW_QUICK, gtsrb)
    finally:
        if previous is None:
            os.environ.pop("POISONLAB_CACHE")
        else:
            os.environ["POISONLAB_CACHE"] = previous
    SERVER["cache"], SERVER["log"] = cache, cache.parent / "server.log"
    process, url, log = start_server(cache, SERVER["log"])
    yield url
    stop_server(process, log)


def start_server(cache: Path, log_path: Path):
    """`streamlit run app.py` on a free port with `cache` as its cache; its output goes to `log_path`."""
    port = free_port()
    log = open(log_path, "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.headless", "true"],
        cwd=ROOT, env={**os.environ, "POISONLAB_CACHE": str(cache)}, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
            return process, url, log
        except OSError:
            assert process.poll() is None, log_path.read_text()
            assert time.time() < deadline, "streamlit did not start"
            time.sleep(0.3)


def stop_server(process, log) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:  # a script still inside a long torch call; the tests asked nothing of its shutdown
        process.kill()
        process.wait()
    log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        yield browser
        browser.close()


def test_deep_link_on_a_fresh_server_gets_the_app_navigation(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(f"{server}/heatmaps?{urlencode(SMALL)}")
    expect(page.get_by_text("Images of the class")).to_be_visible(timeout=60_000)
    nav = page.get_by_test_id("stSidebarNav")
    expect(nav).to_contain_text("Heatmaps")
    expect(nav).to_contain_text("Poison")
    expect(nav).not_to_contain_text("common")
    # Mean heatmaps, the chosen sample, its point clouds and the class's cloud sizes against t.
    expect(page.locator(".js-plotly-plot")).to_have_count(4, timeout=30_000)
    expect(page.locator(".js-plotly-plot").first).to_contain_text("Mean heatmap")
    expect(page.locator(".js-plotly-plot").last).to_contain_text("Cloud size against the mass threshold")
    # The experiment stays in the URL, so the link can be shared.
    assert "subset=3000" in page.url


def test_poison_page_renders_the_samples_and_metrics(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(f"{server}/poison?{urlencode(SMALL)}")
    expect(page.get_by_text("Attack success rate")).to_be_visible(timeout=60_000)
    expect(page.get_by_text("Poisoned training images")).to_be_visible()
    expect(page.locator(".js-plotly-plot").first).to_contain_text("Training samples before", timeout=60_000)


def test_spectral_page_draws_the_spectrum_and_the_embedding(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(f"{server}/spectral?{urlencode(SMALL)}")
    expect(page.get_by_text("Eigengap suggests")).to_be_visible(timeout=60_000)
    expect(page.locator(".js-plotly-plot")).to_have_count(3, timeout=30_000)
    expect(page.locator(".js-plotly-plot").first).to_contain_text("Smallest eigenvalues")
    expect(page.get_by_text("Methods on the same model and class")).to_be_visible()


def test_selecting_points_shows_their_images_and_heatmaps(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1500})
    page.goto(f"{server}/spectral?{urlencode(SMALL)}")
    expect(page.get_by_text("Eigengap suggests")).to_be_visible(timeout=60_000)
    plot = page.locator(".js-plotly-plot").nth(2)
    expect(plot).to_contain_text("drag to select", timeout=30_000)
    plot.scroll_into_view_if_needed()
    area = plot.locator(".nsewdrag").first.bounding_box()
    page.mouse.move(area["x"] + 2, area["y"] + 2)
    page.mouse.down()
    for fx, fy in ((0.99, 0.02), (0.99, 0.99), (0.02, 0.99), (0.02, 0.03)):  # lasso around everything
        page.mouse.move(area["x"] + area["width"] * fx, area["y"] + area["height"] * fy, steps=6)
    page.mouse.up()
    expect(page.get_by_text("selected:")).to_be_visible(timeout=30_000)
    expect(page.get_by_text("heatmap").first).to_be_visible()


def test_hovering_a_point_previews_its_image_and_heatmap(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1500})
    page.goto(f"{server}/spectral?{urlencode(SMALL)}")
    expect(page.locator("[data-testid=hover-preview][data-hooked=true]")).to_be_attached(timeout=90_000)
    plot = page.locator(".st-key-sp_scatter .js-plotly-plot")
    plot.scroll_into_view_if_needed()
    x, y, index = page.evaluate("""() => {
        const gd = document.querySelector('.st-key-sp_scatter .js-plotly-plot');
        const layout = gd._fullLayout, trace = gd._fullData[0], box = gd.getBoundingClientRect();
        return [box.left + layout._size.l + layout.xaxis.l2p(trace.x[0]),
                box.top + layout._size.t + layout.yaxis.l2p(trace.y[0]), trace.customdata[0]];
    }""")
    preview = page.get_by_test_id("hover-preview")
    expect(preview).to_be_hidden()
    page.mouse.move(x - 4, y - 4)
    page.mouse.move(x, y, steps=3)
    expect(preview).to_be_visible(timeout=10_000)
    shown = int(preview.get_attribute("data-index"))
    assert shown == index or page.evaluate(  # a point drawn on top of the first one may win the hover
        "i => document.querySelector('.st-key-sp_scatter .js-plotly-plot')._fullData.some(t => Array.from(t.customdata).includes(i))", shown)
    expect(preview).to_contain_text("image")
    expect(preview).to_contain_text("heatmap")
    drawn = preview.evaluate("""el => Array.from(el.querySelectorAll('canvas')).map(c => {
        const pixels = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let opaque = 0; for (let i = 3; i < pixels.length; i += 4) opaque += pixels[i] > 0; return opaque / (c.width * c.height); })""")
    assert drawn == [1.0, 1.0], drawn  # both tiles painted from the sprite sheets
    page.mouse.move(5, 5)
    expect(preview).to_be_hidden(timeout=10_000)


def choose_quick_gw(page) -> None:
    """Move the GW page's sliders to the cached quick setting: t = 0.5, ε = 0.05, two iterations."""
    sidebar = page.get_by_test_id("stSidebar")
    # Select the cached quick setting: t = 0.5, ε = 0.05, two iterations.
    for label, value in (("Mass threshold t", "0.5"), ("Entropic ε (seeding and updates)", "0.05")):
        slider = sidebar.get_by_role("slider", name=label)
        slider.focus()
        for _ in range(8):
            if slider.get_attribute("aria-valuetext") == value:
                break
            page.keyboard.press("ArrowLeft" if label.startswith("Mass") else "ArrowRight")
            page.wait_for_timeout(400)
        assert slider.get_attribute("aria-valuetext") == value
    iterations = sidebar.get_by_role("slider", name="k-means iterations at most")
    iterations.focus()
    for _ in range(12):  # down to 1, then up to 2
        page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowRight")
    expect(iterations).to_have_attribute("aria-valuetext", "2")


def test_gw_detection_page_draws_barycenters_and_previews_samples(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 2200})
    page.goto(f"{server}/detect?{urlencode(SMALL)}")
    expect(page.get_by_text("Mass threshold t")).to_be_visible(timeout=60_000)
    choose_quick_gw(page)
    expect(page.get_by_text("The two barycenters, drawn by metric MDS")).to_be_visible(timeout=60_000)
    expect(page.get_by_text("Compared with the other methods on the same class")).to_be_visible()
    expect(page.locator("[data-testid=hover-preview][data-hooked=true]")).to_be_attached(timeout=60_000)
    assert page.get_by_test_id("stException").count() == 0


def test_defense_page_attacks_purifies_and_explains(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 2000})
    page.goto(f"{server}/defense?{urlencode(SMALL)}")
    page.get_by_role("button", name="Attack and purify").click(timeout=60_000)
    charts = page.locator(".js-plotly-plot")
    expect(charts).to_have_count(4, timeout=120_000)  # one per test image: four versions and their heatmaps
    expect(charts.first).to_contain_text("barycenter of the attacked image")
    expect(charts.first).to_contain_text("LRP:")
    expect(page.get_by_text("python -m core inspect").first).to_be_visible()
    # The AA/BA table for two attacks on 20 images, computed from the page.
    page.get_by_role("tab", name="AA / BA table").click()
    attacks = page.get_by_test_id("stMultiSelect")
    for name in ("PGD L2", "Carlini–Wagner L2", "DeepFool L∞", "AutoAttack (L∞)", "BPDA PGD L∞ (adaptive)"):
        attacks.get_by_role("button", name=f"Remove {name}").click()
        page.wait_for_timeout(300)
    slider = page.get_by_role("slider", name="Test images")
    slider.focus()
    for _ in range(8):
        page.keyboard.press("ArrowLeft")
        page.wait_for_timeout(200)
    expect(slider).to_have_attribute("aria-valuetext", "20")
    page.get_by_role("button", name="Run the attacks on 20 images").click()
    expect(page.get_by_text("python -m core defend").first).to_be_visible(timeout=180_000)
    expect(page.locator(".js-plotly-plot").filter(has_text="Accuracy on 20 test images")).to_have_count(1)
    expect(page.get_by_text("Sticker trigger")).to_be_visible()
    # An upload of any size is resized; a file that is not PNG or JPEG is refused with a message.
    from PIL import Image

    png, gif = tmp_path / "sign.png", tmp_path / "sign.gif"
    Image.new("RGB", (90, 60), (200, 30, 30)).save(png)
    Image.new("RGB", (90, 60), (200, 30, 30)).save(gif)
    page.get_by_text("upload your own").click()
    upload = page.locator("[data-testid=stFileUploaderDropzoneInput]")
    upload.set_input_files(str(gif))
    expect(page.get_by_text("sign.gif cannot be used: only PNG or JPEG")).to_be_visible(timeout=30_000)
    upload.set_input_files(str(png))
    page.get_by_role("tab", name="Attack and purify").click()
    page.get_by_role("button", name="Attack and purify").click(timeout=30_000)
    expect(page.get_by_text("true class: unknown")).to_be_visible(timeout=60_000)
    assert page.get_by_test_id("stException").count() == 0


PAGES = {  # url path → text that shows the page has rendered its main content
    "": "The pipeline for the active experiment",
    "poison": "Attack success rate",
    "heatmaps": "Images of the class",
    "spectral": "Eigengap suggests",
    "detect": "Mass threshold t",
    "defense": "Attack and purify",
    "study": "Run the study",
    "export": "Score every method on the class",
    "cache": "Partial writes",
}


def test_every_page_loads_without_an_exception_and_is_screenshotted(server, browser):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    for path, ready in PAGES.items():
        page.goto(f"{server}/{path}?{urlencode(SMALL)}")
        expect(page.get_by_text(ready).first).to_be_visible(timeout=90_000)
        page.wait_for_timeout(1500)  # let the charts draw
        page.screenshot(path=str(SCREENSHOTS / f"{path or 'home'}.png"), full_page=True)
        assert page.get_by_test_id("stException").count() == 0, path
        nav = page.get_by_test_id("stSidebarNav")
        for title in ("Home", "Poison", "Heatmaps", "Spectral", "GW detection", "Defense", "Export", "Studies", "Cache"):
            expect(nav).to_contain_text(title)
    assert sorted(p.name for p in SCREENSHOTS.glob("*.png")) == sorted(f"{p or 'home'}.png" for p in PAGES)


def test_home_shows_each_steps_state_and_links_into_its_view(server, browser):
    page = browser.new_page(viewport={"width": 1600, "height": 1400})
    page.goto(f"{server}/?{urlencode(SMALL)}")
    expect(page.get_by_text("The pipeline for the active experiment")).to_be_visible(timeout=60_000)
    diagram = page.get_by_test_id("stGraphVizChart")
    for step in ("1. Poison", "2. Train", "3. Explain", "4. Cluster", "5. Detect", "6. Defend"):
        expect(page.get_by_role("strong").filter(has_text=step)).to_be_visible()
        expect(diagram).to_contain_text(step)
    expect(page.get_by_text("cached").first).to_be_visible()  # the small experiment's model and heatmaps
    expect(page.get_by_text("not yet computed").first).to_be_visible()  # its AA/BA table
    page.get_by_role("link", name="Open Heatmaps").click()
    expect(page.get_by_text("Images of the class")).to_be_visible(timeout=60_000)
    assert "/heatmaps" in page.url and "subset=3000" in page.url


def test_poison_and_heatmaps_pages_change_what_they_show(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(f"{server}/poison?{urlencode(SMALL)}")
    grid = page.locator(".js-plotly-plot").first
    expect(grid).to_contain_text("Training samples before", timeout=60_000)
    before = grid.inner_text()
    page.get_by_role("button", name="Show other samples").click()
    expect(grid).not_to_have_text(before, timeout=30_000)
    page.goto(f"{server}/heatmaps?{urlencode(SMALL)}")
    caption = page.get_by_text("Training image #")
    expect(caption).to_be_visible(timeout=60_000)
    first = caption.inner_text()
    slider = page.get_by_role("slider", name="Sample")
    slider.focus()
    page.keyboard.press("ArrowRight")
    expect(caption).not_to_have_text(first, timeout=30_000)
    assert "hm_position=2" in page.url


def choose(page, label: str, option: str) -> None:
    """Pick `option` in the select box `label`."""
    page.get_by_role("combobox", name=label).click()
    page.get_by_role("option", name=option, exact=True).click()


def settled(page) -> None:
    """Wait until the app's script run has ended: during a run Streamlit shows the new elements
    beside the stale ones they replace."""
    expect(page.get_by_test_id("stApp")).to_have_attribute("data-test-script-state", "notRunning")


def press(page, slider, key: str, times: int) -> None:
    slider.focus()
    for _ in range(times):
        page.keyboard.press(key)
        page.wait_for_timeout(100)


def test_heatmap_thresholds_filter_and_sort_hold_through_class_and_page_switches(server, browser):
    """What is drawn, what the widgets show and what the link says agree after the round trips
    that used to snap the thresholds to their minimum."""
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(f"{server}/heatmaps?{urlencode(SMALL)}")
    expect(page.get_by_text("Training image #")).to_be_visible(timeout=60_000)
    left, right = (page.get_by_role("slider", name=f"Mass threshold t ({side} cloud)") for side in ("left", "right"))
    press(page, left, "ArrowLeft", 9)
    press(page, right, "ArrowLeft", 10)
    page.get_by_role("radiogroup", name="Show").get_by_text("poisoned").click()
    choose(page, "Sort by model confidence", "highest first")
    page.wait_for_function("() => window.location.search.includes('hm_sort=highest')", timeout=30_000)
    clouds = page.locator(".js-plotly-plot").filter(has_text="Point clouds")

    def holds() -> None:
        expect(page.get_by_text("Training image #")).to_be_visible()
        settled(page)
        expect(page.get_by_role("radio", name="poisoned")).to_have_count(1)
        expect(left).to_have_attribute("aria-valuetext", "0.90")
        expect(right).to_have_attribute("aria-valuetext", "0.40")
        expect(page.get_by_role("radio", name="poisoned")).to_be_checked()
        expect(page.get_by_role("combobox", name="Sort by model confidence")).to_have_value("highest first")
        expect(clouds.filter(has_text="t = 0.90: ").filter(has_text="t = 0.40: ")).to_have_count(1)
        expect(page.get_by_text("Training image #")).to_contain_text("· poisoned ·")
        query = page.evaluate("() => window.location.search")
        for field in ("hm_t1=0.9&", "hm_t2=0.4", "hm_filter=poisoned", "hm_sort=highest+first"):
            assert field in query + "&", (field, query)

    holds()
    for _ in range(2):  # class 2 has no poisoned sample: the sample view stops before the thresholds
        choose(page, "Class", "2 · Speed limit (50km/h)")
        expect(page.get_by_text("This class has no poisoned samples")).to_be_visible()
        expect(page.get_by_text("Class 2 has no poisoned samples: the attack gave its stickered images the label 5")).to_be_visible()
        settled(page)
        mean = page.locator(".js-plotly-plot").filter(has_text="Mean heatmap")
        expect(mean).to_have_count(1)
        expect(mean).to_contain_text("clean samples (")
        expect(mean).not_to_contain_text("poisoned samples (0)")
        choose(page, "Class", "5 · Speed limit (80km/h)")
        holds()
    nav = page.get_by_test_id("stSidebarNav")
    nav.get_by_role("link", name="Spectral").click()
    expect(page.get_by_text("Eigengap suggests")).to_be_visible(timeout=60_000)
    nav.get_by_role("link", name="Heatmaps").click()
    holds()
    assert page.get_by_test_id("stException").count() == 0


def test_gw_controls_hold_through_class_and_page_switches(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 2200})
    page.goto(f"{server}/detect?{urlencode(SMALL)}")
    expect(page.get_by_text("Mass threshold t")).to_be_visible(timeout=60_000)
    choose_quick_gw(page)
    sidebar = page.get_by_test_id("stSidebar")

    def holds() -> None:
        expect(page.get_by_text("The two barycenters, drawn by metric MDS")).to_be_visible(timeout=60_000)  # the cached quick result
        settled(page)
        for label, value in (("Mass threshold t", "0.5"), ("Entropic ε (seeding and updates)", "0.05"), ("k-means iterations at most", "2")):
            expect(sidebar.get_by_role("slider", name=label)).to_have_attribute("aria-valuetext", value)
        query = page.evaluate("() => window.location.search") + "&"
        for field in ("gw_threshold=0.5&", "gw_eps=0.05&", "gw_iter=2&", "gw_class=5&"):
            assert field in query, (field, query)

    holds()
    choose(page, "Class", "2 · Speed limit (50km/h)")
    page.wait_for_function("() => window.location.search.includes('gw_class=2')", timeout=30_000)
    settled(page)
    expect(sidebar.get_by_role("slider", name="Mass threshold t")).to_have_attribute("aria-valuetext", "0.5")
    choose(page, "Class", "5 · Speed limit (80km/h)")
    holds()
    nav = page.get_by_test_id("stSidebarNav")
    nav.get_by_role("link", name="Heatmaps").click()
    expect(page.get_by_text("Images of the class")).to_be_visible(timeout=60_000)
    nav.get_by_role("link", name="GW detection").click()
    holds()
    assert page.get_by_test_id("stException").count() == 0


def test_spectral_controls_hold_through_class_and_page_switches(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    page.goto(f"{server}/spectral?{urlencode(SMALL)}")
    expect(page.get_by_text("Eigengap suggests")).to_be_visible(timeout=60_000)
    sidebar = page.get_by_test_id("stSidebar")
    k, clusters = (sidebar.get_by_role("slider", name=name) for name in ("Neighbours k of the kNN graph", "Number of clusters"))
    press(page, k, "ArrowRight", 2)
    press(page, clusters, "ArrowRight", 1)
    page.wait_for_function("() => window.location.search.includes('sp_clusters=3')", timeout=30_000)
    page.get_by_role("radiogroup", name="Embedding").get_by_text("t-SNE of the heatmaps").click()
    scatter = page.locator(".js-plotly-plot").filter(has_text="The class's samples")

    def holds() -> None:
        expect(scatter.filter(has_text="t-SNE of the heatmaps")).to_have_count(1, timeout=120_000)  # fitted in a job, then drawn
        settled(page)
        expect(k).to_have_attribute("aria-valuetext", "12")
        expect(clusters).to_have_attribute("aria-valuetext", "3")
        expect(page.get_by_role("radio", name="t-SNE of the heatmaps")).to_be_checked()
        expect(scatter).to_contain_text("cluster 2")  # three clusters drawn
        query = page.evaluate("() => window.location.search") + "&"
        for field in ("sp_k=12&", "sp_clusters=3&", "sp_embedding=tsne&", "sp_class=5&"):
            assert field in query, (field, query)

    holds()
    choose(page, "Class", "2 · Speed limit (50km/h)")
    page.wait_for_function("() => window.location.search.includes('sp_class=2')", timeout=30_000)
    expect(page.get_by_text("Eigengap suggests")).to_be_visible(timeout=60_000)
    settled(page)
    expect(k).to_have_attribute("aria-valuetext", "12")
    choose(page, "Class", "5 · Speed limit (80km/h)")
    holds()
    nav = page.get_by_test_id("stSidebarNav")
    nav.get_by_role("link", name="Heatmaps").click()
    expect(page.get_by_text("Images of the class")).to_be_visible(timeout=60_000)
    nav.get_by_role("link", name="Spectral").click()
    holds()
    assert page.get_by_test_id("stException").count() == 0


def received(page) -> list:
    """The websocket frames the page receives from now on (what the server sends it)."""
    frames = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda f: frames.append(f if isinstance(f, bytes) else f.encode())))
    return frames


def test_tuning_resends_only_the_section_it_changes(server, browser):
    """A threshold nudge, a sample step and a colour switch rerun their section alone: the server
    does not send the page's other figures again, so the browser does not redraw them."""
    page = browser.new_page(viewport={"width": 1400, "height": 1800})
    frames = received(page)
    page.goto(f"{server}/heatmaps?{urlencode(SMALL)}")
    expect(page.get_by_text("Training image #")).to_be_visible(timeout=60_000)
    settled(page)
    page.wait_for_timeout(500)
    assert b"Mean heatmap of the class" in b"".join(frames)  # the whole page came in the first run
    frames.clear()
    left = page.get_by_role("slider", name="Mass threshold t (left cloud)")
    left.focus()
    page.keyboard.press("ArrowLeft")
    expect(page.locator(".js-plotly-plot").filter(has_text="t = 0.98: ")).to_have_count(1)
    settled(page)
    sent = b"".join(frames)
    assert b"Point clouds" in sent and b"Cloud size against" in sent
    assert b"Mean heatmap of the class" not in sent and b"overlay" not in sent and b"Training image #" not in sent
    frames.clear()
    caption = page.get_by_text("Training image #")
    before = caption.inner_text()
    page.get_by_role("slider", name="Sample").focus()
    page.keyboard.press("ArrowRight")
    expect(caption).not_to_have_text(before)
    settled(page)
    sent = b"".join(frames)
    assert b"overlay" in sent and b"Mean heatmap of the class" not in sent

    page.goto(f"{server}/spectral?{urlencode(SMALL)}")
    expect(page.get_by_text("Eigengap suggests")).to_be_visible(timeout=60_000)
    settled(page)
    page.wait_for_timeout(500)
    frames.clear()
    page.get_by_role("radiogroup", name="Colour by").get_by_text("ground truth").click()
    page.wait_for_function("() => window.location.search.includes('sp_colour=ground+truth')", timeout=30_000)
    settled(page)
    scatter = page.locator(".js-plotly-plot").filter(has_text="The class's samples")
    expect(scatter).to_have_count(1)
    expect(scatter).to_contain_text("poisoned (")
    sent = b"".join(frames)
    assert b"The class's samples" in sent and b"Smallest eigenvalues" not in sent and b"Methods on the same model" not in sent


def test_a_study_runs_on_ray_from_the_page_and_its_cells_fill_in(server, browser):
    """Two cells: the module's model (cached) and one more share, trained by the study's own process
    on a local Ray runtime while the page refreshes its grid; then the charts."""
    page = browser.new_page(viewport={"width": 1400, "height": 2000})
    page.goto(f"{server}/study")
    box = page.get_by_label("The study (TOML: name, detectors, [base], [grid])")
    expect(box).to_be_visible(timeout=60_000)
    box.fill("name = 'two shares'\n[base]\nsubset = 3000\nepochs = 2\npatience = 2\n[grid]\npp = [0.2, 0.33]\n")
    page.keyboard.press("Control+Enter")
    expect(page.get_by_test_id("stMetric").filter(has_text="Steps cached")).to_contain_text("1 of 2")
    page.get_by_role("button", name="Run the study").click()
    expect(page.get_by_text("Running: ")).to_be_visible(timeout=60_000)
    expect(page.get_by_test_id("stMetric").filter(has_text="Steps cached")).to_contain_text("2 of 2", timeout=300_000)
    expect(page.locator(".js-plotly-plot").filter(has_text="Attack success rate")).to_have_count(1)
    expect(page.get_by_role("button", name="Run the study")).to_be_disabled()
    assert page.get_by_test_id("stException").count() == 0


def test_defense_budgets_hold_when_the_attack_changes_norm(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    page.goto(f"{server}/defense?{urlencode(SMALL)}")
    expect(page.get_by_role("tab", name="Attack and purify")).to_be_visible(timeout=60_000)  # its result may be shown already
    sidebar = page.get_by_test_id("stSidebar")
    linf = sidebar.get_by_role("spinbutton", name="Budget ε (L∞, in 1/255)")
    expect(linf).to_have_value("8.00")
    choose(page, "Attack", "PGD L2")
    expect(sidebar.get_by_role("spinbutton", name="Budget ε (L2)")).to_have_value("0.50")
    sidebar.get_by_text("B4", exact=True).click()  # another control, while the L∞ budget is hidden
    page.wait_for_function("() => window.location.search.includes('df_marginals=B4')", timeout=30_000)
    choose(page, "Attack", "FGSM (L∞)")
    expect(linf).to_have_value("8.00")
    choose(page, "Attack", "Carlini–Wagner L2")  # the next run used to send the 0.50 shown back
    page.wait_for_function("() => window.location.search.includes('df_attack=cw-l2')", timeout=30_000)
    choose(page, "Attack", "DeepFool L∞")
    expect(linf).to_have_value("8.00")
    page.wait_for_function("() => window.location.search.includes('df_attack=deepfool-linf')", timeout=30_000)
    assert "df_eps_linf=8.0&" in page.evaluate("() => window.location.search")
    nav = page.get_by_test_id("stSidebarNav")
    nav.get_by_role("link", name="Heatmaps").click()
    expect(page.get_by_text("Images of the class")).to_be_visible(timeout=60_000)
    nav.get_by_role("link", name="Defense").click()
    expect(sidebar.get_by_role("combobox", name="Attack")).to_have_value("DeepFool L∞")
    expect(linf).to_have_value("8.00")
    expect(sidebar.get_by_role("radio", name="B4")).to_be_checked()


def test_a_copied_link_restores_the_view_in_a_new_browser(server, browser):
    first = browser.new_context(viewport={"width": 1400, "height": 1600})
    page = first.new_page()
    page.goto(f"{server}/spectral?{urlencode(SMALL)}")
    expect(page.get_by_text("Eigengap suggests")).to_be_visible(timeout=60_000)
    clusters = page.get_by_test_id("stSidebar").get_by_role("slider", name="Number of clusters")
    clusters.focus()
    page.keyboard.press("ArrowRight")
    expect(clusters).to_have_attribute("aria-valuetext", "3")
    page.wait_for_function("() => window.location.search.includes('sp_clusters=3')", timeout=30_000)
    page.get_by_text("ground truth", exact=True).click()
    page.wait_for_function("() => window.location.search.includes('sp_colour=ground+truth')", timeout=30_000)
    link = page.url
    first.close()
    second = browser.new_context(viewport={"width": 1400, "height": 1600})  # a new browser: no session, no cookies
    page = second.new_page()
    page.goto(link)
    expect(page.get_by_text("Eigengap suggests")).to_be_visible(timeout=60_000)
    expect(page.get_by_test_id("stSidebar").get_by_role("slider", name="Number of clusters")).to_have_attribute("aria-valuetext", "3")
    expect(page.get_by_role("radio", name="ground truth")).to_be_checked()
    assert "subset=3000" in page.url
    second.close()


def test_two_browsers_asking_for_the_same_uncomputed_artifact_start_one_job(server, browser):
    query = urlencode({**SMALL, "hm_class": "1"})  # class 1's heatmaps are not computed yet
    contexts = [browser.new_context(viewport={"width": 1400, "height": 1400}) for _ in range(2)]
    pages = [context.new_page() for context in contexts]
    for page in pages:
        page.goto(f"{server}/heatmaps?{query}")
        expect(page.get_by_role("button", name="Compute heatmaps")).to_be_visible(timeout=60_000)
    for page in pages:  # both ask, one right after the other
        page.get_by_role("button", name="Compute heatmaps").click()
    for page in pages:
        expect(page.get_by_text("Images of the class")).to_be_visible(timeout=120_000)
        assert page.get_by_test_id("stException").count() == 0
    started = [line for line in SERVER["log"].read_text().splitlines() if "job started: LRP heatmaps (heatmaps-01-" in line]
    assert len(started) == 1, started
    for context in contexts:
        context.close()


def test_export_page_downloads_the_detection_csv_and_the_experiment_json(server, browser, tmp_path):
    import json

    import pandas as pd

    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    page.goto(f"{server}/export?{urlencode(SMALL)}")
    page.get_by_role("button", name="Score every method on the class").click(timeout=60_000)
    csv_button = page.get_by_role("button", name=re.compile(r"Download the \d+ rows as CSV"))
    expect(csv_button).to_be_visible(timeout=120_000)
    with page.expect_download() as download:
        csv_button.click()
    download.value.save_as(tmp_path / "detections.csv")
    frame = pd.read_csv(tmp_path / "detections.csv")
    assert {"train_index", "poisoned", "lrp_spectral_flag", "lrp_spectral_score", "activation_clustering_flag"} <= set(frame.columns)
    assert len(frame) > 100 and set(frame["poisoned"].unique()) == {0, 1}
    with page.expect_download() as download:
        page.get_by_role("button", name="Download the experiment as JSON").click()
    download.value.save_as(tmp_path / "experiment.json")
    record = json.loads((tmp_path / "experiment.json").read_text())
    assert record["query"]["subset"] == "3000" and record["detection"]["samples"] == len(frame)
    expect(page.get_by_text("python -m core export").first).to_be_visible()
    assert page.get_by_test_id("stException").count() == 0


def test_cache_page_filters_and_deletes_artifacts(server, browser):
    import torch

    from core.cache import save_artifact

    junk = SERVER["cache"] / "zzjunk-00000000deadbeef.safetensors"
    save_artifact(junk, {"images": torch.zeros(2, 3, 32, 32)}, {"note": "made by the test"})
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(f"{server}/cache?{urlencode(SMALL)}")
    expect(page.get_by_text("Partial writes")).to_be_visible(timeout=60_000)
    files = page.get_by_test_id("stMetric").filter(has_text="Files")
    total = files.inner_text()
    kinds = page.get_by_test_id("stMultiSelect")
    kinds.get_by_role("button", name="Clear all").click()
    expect(files).to_contain_text("0 of", timeout=30_000)
    kinds.locator("input").fill("zzjunk")
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")  # close the option list, which covers the table
    expect(files).not_to_have_text(total, timeout=30_000)
    expect(files).to_contain_text("1 of")
    device = page.get_by_test_id("stSidebar").get_by_test_id("stSelectbox").filter(has_text="Compute on")
    expect(device.get_by_role("combobox")).to_have_value(re.compile(r"^auto: "))  # the device setting outlives the page's reruns
    page.get_by_role("heading", name="Cache").click()  # nothing open over the table
    grid = page.get_by_test_id("stDataFrame")
    selected = page.get_by_text("1 selected")
    for _ in range(5):  # the table is a canvas that may still be redrawing after the filter
        page.wait_for_timeout(1000)
        box = grid.bounding_box()
        page.mouse.click(box["x"] + 18, box["y"] + 35 + 17)  # the first row's selection box
        try:
            expect(selected).to_be_visible(timeout=5_000)
            break
        except AssertionError:
            continue
    expect(selected).to_be_visible(timeout=10_000)
    page.get_by_text("Yes, delete them").click()
    page.get_by_role("button", name="Delete the selected files").click()
    expect(files).to_contain_text("0 of", timeout=30_000)
    assert not junk.exists()
    assert page.get_by_test_id("stException").count() == 0


def test_a_running_training_can_be_cancelled_and_leaves_nothing_behind(server, browser, gtsrb):
    query = {**SMALL, "seed": "11", "epochs": "30", "patience": "30"}  # an experiment nobody trained yet
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    page.goto(f"{server}/poison?{urlencode(query)}")
    page.get_by_role("button", name="Train model").click(timeout=60_000)
    expect(page.get_by_test_id("stProgress")).to_be_visible(timeout=60_000)
    page.get_by_role("button", name="Cancel").click()
    expect(page.get_by_text("Training was cancelled")).to_be_visible(timeout=60_000)
    expect(page.get_by_role("button", name="Train model")).to_be_visible(timeout=30_000)
    from core.experiment import model_path

    assert model_path(gtsrb, ExperimentConfig.from_query(query)).name not in {p.name for p in SERVER["cache"].iterdir()}
    assert not [p for p in SERVER["cache"].iterdir() if p.name.endswith(".tmp")]
    assert page.get_by_test_id("stException").count() == 0


def test_two_servers_sharing_the_cache_train_a_model_once(server, browser, gtsrb):
    """A second server process (its own job runner) asks for a model the first is training:
    it waits for the artifact's file lock, then loads the model instead of training it again."""
    from core.experiment import model_path

    query = {**SMALL, "seed": "21", "epochs": "4", "patience": "4"}
    path = SERVER["cache"] / model_path(gtsrb, ExperimentConfig.from_query(query)).name
    other, other_url, other_log = start_server(SERVER["cache"], SERVER["cache"].parent / "second-server.log")
    try:
        pages = [browser.new_page(viewport={"width": 1400, "height": 1600}) for _ in range(2)]
        for page, url in zip(pages, (server, other_url)):
            page.goto(f"{url}/poison?{urlencode(query)}")
            expect(page.get_by_role("button", name="Train model")).to_be_visible(timeout=60_000)
        for page in pages:
            page.get_by_role("button", name="Train model").click()
        # Whichever server takes the lock first trains; the other one's page shows the trainer's progress:
        # its own job waits for the lock, or (its click came after the lock was taken) it starts none.
        shown = "another process is computing this|waiting for process [0-9]+, which is at|Training is running in process [0-9]+"
        waiting = [page.get_by_text(re.compile(shown)) for page in pages]
        deadline = time.time() + 60
        while not any(w.count() for w in waiting):
            assert time.time() < deadline, "neither page showed the wait for the other server"
            pages[0].wait_for_timeout(200)
        for page in pages:  # on a slow 2-core CPU, jobs of earlier tests may still share the cores
            expect(page.get_by_text("Attack success rate")).to_be_visible(timeout=600_000)
        written = path.stat().st_mtime_ns
        times = [page.get_by_test_id("stMetric").filter(has_text="Training time").inner_text() for page in pages]
        assert times[0] == times[1]  # the same training run, read from the same file
        assert path.stat().st_mtime_ns == written
        logs = [SERVER["log"].read_text(), (SERVER["cache"].parent / "second-server.log").read_text()]
        assert 1 <= sum(log.count(f"job started: Training ({path.name})") for log in logs) <= 2  # at most one job each; one trained
        for page in pages:
            assert page.get_by_test_id("stException").count() == 0
    finally:
        stop_server(other, other_log)


def test_the_servers_logged_no_traceback_and_no_watcher_noise(server):
    """Last in this module: what the servers printed during every browser test above."""
    logs = sorted(SERVER["log"].parent.glob("*server.log"))
    assert SERVER["log"] in logs
    for log in logs:
        text = log.read_text(errors="replace")
        for noise in ("Traceback", "Inotify", "ArrowInvalid", "Exception", "Error:"):
            assert noise not in text, f"{log.name}: {text[max(0, text.find(noise) - 300):text.find(noise) + 700]}"
