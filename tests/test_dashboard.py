"""The dashboard (p2pllm_abm/app.py): its panels rendered without a browser, and the page served by
``solara run`` (as ``make dashboard`` starts it) driven in headless Chromium with Playwright.

The browser test needs Debian's ``chromium`` (``apt-get install -y chromium``; ``.ci/run`` installs
it when missing) and is skipped without it."""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import warnings

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # solara warns about its optional extras on import
    import ipywidgets
    import ipyvuetify
    import solara
    from mesa.visualization.solara_viz import ModelController, _check_model_params
    from mesa.visualization.utils import force_update

from p2pllm_abm import P2PLLMModel
from p2pllm_abm.app import (COMPONENTS, MODEL_PARAMS, NetworkView, Page, PriceAndPeers, initial_parameters,
                            weighted_sum_choice)
from p2pllm_abm.figures import quantile_scale

SMALL = {"peers": 40, "stages": 2, "seed": 1}


def picture(component) -> bytes:
    """The PNG a panel renders."""
    _, rendered = solara.render(component, handle_error=False)
    return bytes(rendered.find(ipywidgets.Image).widget.value)


def test_every_panel_draws_a_figure():
    model = P2PLLMModel(**SMALL)
    model.run(3)
    for component, page in COMPONENTS:
        assert page == 0 and picture(component(model)).startswith(b"\x89PNG")


def test_the_controls_are_model_keywords():
    """Mesa's own check of SolaraViz parameters passes, and Reset's keywords build the model."""
    _check_model_params(P2PLLMModel.__init__, MODEL_PARAMS)
    model = P2PLLMModel(**initial_parameters())
    assert (model.config.market.alpha, model.config.network.peers, model.config.seed) == (0.5, 200, 0)
    solara.render(Page(), handle_error=False)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_the_marked_choice_is_the_weighted_sum_optimum_of_the_frontier(alpha):
    model = P2PLLMModel(**SMALL)
    model.run(5)
    frontier = model.pareto_frontier().to_frame()
    best = (alpha * frontier["price"] + (1 - alpha) * frontier["time"]).min()
    price, time_ms = weighted_sum_choice(model, frontier, alpha)
    assert alpha * price + (1 - alpha) * time_ms == pytest.approx(best, rel=1e-12, abs=1e-12)


def test_one_expensive_peer_does_not_set_the_colour_scale():
    prices = np.concatenate([np.linspace(1.0, 2.0, 99), [1e6]])
    norm = quantile_scale(prices)
    assert norm.vmin == pytest.approx(np.percentile(prices, 5)) and norm.vmax < 3.0


def test_step_button_advances_the_model_and_the_plots_follow():
    model = solara.reactive(P2PLLMModel(**SMALL))
    _, controls = solara.render(ModelController(model, render_interval=solara.reactive(1),
                                                play_interval=solara.reactive(100),
                                                use_threads=solara.reactive(False)), handle_error=False)
    before = picture(PriceAndPeers(model.value)), picture(NetworkView(model.value))
    for _ in range(3):
        controls.find(ipyvuetify.Btn, children=["Step"]).widget.click()
    force_update()
    assert model.value.steps == 3
    after = picture(PriceAndPeers(model.value)), picture(NetworkView(model.value))
    assert before[0] != after[0] and before[1] != after[1]


# -- in a real browser -------------------------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def dashboard_url():
    """``solara run p2pllm_abm.app`` on a free local port (the command ``make dashboard`` runs)."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "solara", "run", "p2pllm_abm.app", "--host", "127.0.0.1",
                               "--port", str(port), "--no-open", "--production"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"solara run did not serve {url}: {server.stderr.read()[-2000:]}") from None
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium; "
                                               ".ci/run installs it)")
def test_the_served_dashboard_steps_in_a_browser(dashboard_url):
    """Load the page, press Step three times, and see the step count and every plot change."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1300})
            page.goto(dashboard_url, timeout=120_000)
            step = page.get_by_role("button", name="Step")
            step.wait_for(timeout=120_000)
            plots = page.locator("img")
            plots.nth(len(COMPONENTS) - 1).wait_for(timeout=60_000)
            page.get_by_text("Step: 0").wait_for()
            before = [pixels(plots.nth(k).screenshot()) for k in range(len(COMPONENTS))]
            for count in (1, 2, 3):
                step.click()
                page.get_by_text(f"Step: {count}").wait_for(timeout=60_000)
            deadline = time.monotonic() + 30  # the panels redraw after the step count: wait for all of them
            while True:
                after = [pixels(plots.nth(k).screenshot()) for k in range(len(COMPONENTS))]
                changed = [old.shape == new.shape and np.mean(np.abs(old - new)) > 0.05 for old, new in zip(before, after)]
                if all(changed) or time.monotonic() > deadline:
                    break
                page.wait_for_timeout(500)
        finally:
            browser.close()
    assert all(old.std() > 5 for old in before)  # drawn figures, not blank boxes
    assert changed == [True] * len(COMPONENTS)  # every plot changed
