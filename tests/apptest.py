"""Helpers for the AppTest page tests: open a page through app.py, wait for background jobs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Optional

from streamlit.testing.v1 import AppTest

from core.jobs import RUNNER

ROOT = Path(__file__).resolve().parent.parent


def open_page(page: str, query: Optional[Mapping[str, str]] = None, timeout: float = 90) -> AppTest:
    """Run app.py with `query` in the URL and `page` (e.g. "pages/poison.py") selected."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=timeout)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    at.switch_page(page)
    at.run()
    assert not at.exception, at.exception
    return at


def wait_for_jobs(timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while any(job.active for job in RUNNER.jobs()):
        assert time.time() < deadline, "background job did not finish"
        time.sleep(0.3)
