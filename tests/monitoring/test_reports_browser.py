"""The monitor's drift reports as an operator sees them: in headless Chromium (Debian's), with Evidently's
JavaScript rendering the plots, not just HTML arriving."""

from __future__ import annotations


def test_drift_reports_render_in_a_browser(running_monitor, browser) -> None:
    _, server = running_monitor
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"http://127.0.0.1:{server.port}/reports")
    links = [a.get_attribute("href") for a in page.locator("table a").all()]
    assert links, page.content()[:2000]
    page.goto(f"http://127.0.0.1:{server.port}{links[0]}")
    # Evidently draws its widgets with Plotly once the page's scripts ran: wait for the plots themselves.
    page.wait_for_selector(".js-plotly-plot svg", timeout=30_000)
    text = page.inner_text("body")
    assert "Drift detection method" in text and "embedding_pc1" in text
    assert page.locator(".js-plotly-plot").count() >= 5  # a plot per signal column at least
    assert errors == []
    page.close()
