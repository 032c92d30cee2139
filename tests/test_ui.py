"""The Gradio app in a real browser: Debian's chromium driven by Playwright (never a browser download).

`make test` installs chromium with apt-get when it is missing; these tests fail, not skip, when it
cannot be had, since CI must exercise them. Screenshots go to $SPARSEDIFF_ARTIFACTS (default: the
test's temporary folder).
"""

import math
import os
import re
import socket
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
SMALL = {"Frames": "8", "Height": "32", "Width": "32", "Steps": "4"}
TIMEOUT = 120_000  # ms: a compare at the small size takes seconds; the first one also loads the model


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    os.environ.setdefault("SPARSEDIFF_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    from sparsediff.ui.app import build_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app("shapes-t2v")
    app.queue(default_concurrency_limit=4)
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}"
    app.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    from sparsediff.ui.browser import launch_chromium

    with sync_playwright() as playwright:
        launched = launch_chromium(playwright)
        yield launched
        launched.close()


@pytest.fixture
def artifacts(tmp_path) -> Path:
    folder = Path(os.environ.get("SPARSEDIFF_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _open(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    page.goto(url)
    page.get_by_role("button", name="Compare", exact=True).wait_for(timeout=TIMEOUT)
    for label, value in SMALL.items():
        page.get_by_label(label, exact=True).fill(value)
    return page


def _rows(page, first_cell: str) -> list[list[str]]:
    """The cells of the table whose rows include one starting with `first_cell`, read as a person
    reads them (Gradio's dataframe is a grid of ARIA rows), once that row is there."""
    page.get_by_role("row").filter(has_text=first_cell).first.wait_for(timeout=TIMEOUT)
    rows = page.get_by_role("row")
    return [rows.nth(i).inner_text().split("\n") for i in range(rows.count())]


def _figures(page) -> dict[str, str]:
    return {cells[0].strip(): cells[-1].strip() for cells in _rows(page, "speedup") if len(cells) >= 2}


def _number(text: str) -> float:
    return float(re.match(r"[-0-9.]+", text).group())


def test_compare_shows_both_videos_and_the_figures(browser, url, artifacts):
    page = _open(browser, url)
    page.get_by_label("Prompt", exact=True).fill("a cyan square moving up left")
    page.get_by_role("button", name="Compare", exact=True).click()
    figures = _figures(page)
    assert math.isfinite(_number(figures["speedup"])) and _number(figures["speedup"]) > 0
    assert math.isfinite(_number(figures["PSNR dB"])) and 0 < _number(figures["density (all attention work)"]) < 1
    assert "judge sparse" in figures
    assert page.locator("video").count() == 2
    page.screenshot(path=str(artifacts / "ui-compare.png"), full_page=True)
    page.close()


def test_errors_reach_the_page_and_the_page_still_works(browser, url, tmp_path):
    page = _open(browser, url)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    page.locator("input[type=file]").first.set_input_files(str(bad))
    page.get_by_role("button", name="Compare", exact=True).click()
    page.get_by_text("is not valid JSON").first.wait_for(timeout=TIMEOUT)
    from sparsediff import ModelSignature, SparseConfig

    page.get_by_role("button", name="Clear", exact=True).first.click()
    foreign = SparseConfig(model=ModelSignature(model_class="FluxTransformer2DModel", attention_layers=4, heads=24,
                                                head_dim=128)).save(tmp_path / "flux.json")  # fmt: skip
    page.locator("input[type=file]").first.set_input_files(str(foreign))
    page.get_by_role("button", name="Compare", exact=True).click()
    page.get_by_text("this config was made for another model").first.wait_for(timeout=TIMEOUT)
    page.get_by_label("Prompt", exact=True).fill(" ")
    page.get_by_role("button", name="Compare", exact=True).click()
    page.get_by_text("the prompt is empty").first.wait_for(timeout=TIMEOUT)
    page.get_by_label("Prompt", exact=True).fill("a red circle moving right")
    page.get_by_label("Height", exact=True).fill("50")  # the request is checked first: its error shows
    page.get_by_role("button", name="Sparse only", exact=True).click()
    page.get_by_text("--height 50 is not a multiple of").first.wait_for(timeout=TIMEOUT)
    assert "Traceback" not in page.inner_text("body")
    page.get_by_role("button", name="Clear", exact=True).first.click()  # the config upload comes first
    page.get_by_label("Height", exact=True).fill("32")
    page.get_by_role("button", name="Compare", exact=True).click()
    assert _number(_figures(page)["speedup"]) > 0
    page.close()


def test_two_users_at_once_each_see_their_own_prompt(browser, url):
    from sparsediff.generate import Request, compare, resolve_config
    from sparsediff.pipelines.registry import Size, load_model

    prompts = ["a red circle moving right", "a blue square moving down"]
    pages = [_open(browser, url) for _ in prompts]
    for page, prompt in zip(pages, prompts, strict=True):
        page.get_by_label("Prompt", exact=True).fill(prompt)
    for page in pages:
        page.get_by_role("button", name="Compare", exact=True).click()
    shown = [_figures(page) for page in pages]
    loaded = load_model("shapes-t2v")
    for page, prompt, figures in zip(pages, prompts, shown, strict=True):
        assert page.get_by_text(prompt, exact=True).count() >= 1
        config = resolve_config(loaded.entry, None, None, None)
        request = Request(prompt, Size(8, 32, 32), 4, loaded.entry.guidance)
        by_itself = compare(loaded, request, config, Path(os.environ["SPARSEDIFF_CACHE"]) / f"{prompt[:6]}.mp4")
        assert figures["PSNR dB"] == f"{by_itself.psnr:.2f}"  # the same result as that prompt run alone
        page.close()


def test_text_tab_answers_dense_and_with_sparsed(browser, url):
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(url)
    page.get_by_role("tab", name="Text").click()
    page.get_by_role("button", name="Make a haystack").click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('textarea')].some(t => t.value.length > 100)", timeout=TIMEOUT
    )
    page.get_by_role("button", name="Answer").click()
    answers = {cells[0].strip(): cells for cells in _rows(page, "SparseD")}
    assert len(answers["dense"]) == len(answers["SparseD"]) == 3  # attention, answer, seconds
    assert answers["dense"][1].strip() and answers["SparseD"][1].strip()
    assert "speedup" in page.inner_text("body")
    page.close()


def test_search_tab_refines_end_to_end_and_hands_its_config_to_compare(browser, url):
    page = _open(browser, url)
    page.get_by_role("tab", name="Search").click()
    page.get_by_label("Budget (fraction of dense time), max error or quality target").fill("0.9")
    page.get_by_label("Refine: end-to-end generations (0: off)").fill("2")
    page.get_by_role("button", name="Search", exact=True).click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('textarea')].some(t => t.value.includes('refined end to end'))",
        timeout=TIMEOUT,
    )
    page.get_by_role("button", name="Use this config in Compare").click()
    page.get_by_role("tab", name="Compare").click()
    page.get_by_role("button", name="Compare", exact=True).click()
    figures = _figures(page)
    assert _number(figures["speedup"]) > 0 and math.isfinite(_number(figures["PSNR dB"]))
    page.close()


def test_search_tab_takes_a_quality_target(browser, url):
    page = _open(browser, url)
    page.get_by_role("tab", name="Search").click()
    page.get_by_label("min PSNR (dB)").check()
    page.get_by_label("Budget (fraction of dense time), max error or quality target").fill("20")
    page.get_by_role("button", name="Search", exact=True).click()
    page.wait_for_function(
        "() => [...document.querySelectorAll('textarea')].some(t => t.value.includes('target PSNR >= 20'))",
        timeout=TIMEOUT,
    )
    text = next(v for t in page.locator("textarea").all() if "target PSNR >= 20" in (v := t.input_value()))
    assert "on the calibration prompts" in text and "front" in text
    page.close()


def test_a_config_that_runs_every_call_dense_shows_its_figures(browser, url, tmp_path):
    from sparsediff import SparseConfig

    page = _open(browser, url)
    every_step_dense = SparseConfig(method="local", schedule={"dense_fraction": 1.0}).save(tmp_path / "dense.json")
    page.locator("input[type=file]").first.set_input_files(str(every_step_dense))
    page.get_by_role("button", name="Compare", exact=True).click()
    figures = _figures(page)
    assert figures["density (sparse calls)"] == "no call ran sparse" and figures["PSNR dB"] == "identical"
    page.close()
