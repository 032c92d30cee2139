"""Regenerate the docs' pictures of the default config that no benchmark record draws: the dense
and sparse frame strips of `shapes-t2v` (README, docs/results.md) and the Gradio app's Compare
tab (docs/cli.md). Each run of the default config, on this machine; the figures in the screenshot
are the ones the app measured. Needs the test extra (Playwright) and Debian's chromium.

    .venv/bin/python scripts/docs_figures.py            # writes docs/figures/...
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "a cyan square moving up left"  # held out of training
TIMEOUT_MS = 600_000  # a compare at the default size on 2 CPU cores, model load included


def strips(out: Path, threads: int) -> None:
    """`sparsediff generate --compare` to `out`/shapes-strip.png: one .dense.png and one .sparse.png."""
    command = [sys.executable, "-m", "sparsediff", "generate", "--prompt", PROMPT, "--compare",
               "--out", str(out / "shapes-strip.png"), "--threads", str(threads)]  # fmt: skip
    subprocess.run(command, check=True)


def compare_tab(out: Path) -> None:
    """The app's Compare tab after one compare of `PROMPT` at the model's default size."""
    from playwright.sync_api import sync_playwright

    from sparsediff.ui.app import build_app
    from sparsediff.ui.browser import launch_chromium

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app("shapes-t2v")
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(f"http://127.0.0.1:{port}")
            page.get_by_label("Prompt", exact=True).fill(PROMPT)
            page.get_by_role("button", name="Compare", exact=True).click()
            page.get_by_role("row").filter(has_text="speedup").first.wait_for(timeout=TIMEOUT_MS)
            page.locator("video").nth(1).wait_for(timeout=TIMEOUT_MS)
            page.screenshot(path=str(out / "ui-compare.png"), full_page=True)
            browser.close()
    finally:
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    strips(args.out, args.threads)
    compare_tab(args.out)
    print(f"wrote {args.out}/shapes-strip.dense.png, shapes-strip.sparse.png, ui-compare.png")


if __name__ == "__main__":
    main()
