"""Debian's chromium, headless through Playwright (a test extra), for the app's browser tests and
the docs' screenshot: never a browser download, flags that keep it off the network."""

from __future__ import annotations

import shutil

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"]  # fmt: skip


def launch_chromium(playwright):
    """A headless browser from the system's `chromium`; an error that says how to get it when missing."""
    chromium = shutil.which("chromium")
    if chromium is None:
        raise RuntimeError("chromium is missing: apt-get install chromium (Debian's package; `make test` installs it)")
    return playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_FLAGS)
