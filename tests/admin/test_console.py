"""The web console in Debian's Chromium against a real adapter, registry, broker and drift monitor: an operator
signs in and approves; a viewer cannot; forged and CSRF-less posts are refused; nothing is rendered unescaped."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneloop.registry import State

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "console-candidate.png"


def signed_in(browser, world, name: str):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{world.admin_url}/console/")
    assert page.url.endswith("/console/login")  # not signed in: sent to sign in
    page.fill("input[name=token]", world.tokens[name])
    page.click("button[type=submit]")
    page.wait_for_url(f"{world.admin_url}/console/")
    return context, page, errors


def csrf_of(page) -> str:
    return page.locator("header input[name=csrf]").get_attribute("value")


def test_a_wrong_token_does_not_sign_in(browser, admin_world) -> None:
    page = browser.new_page()
    page.goto(f"{admin_world.admin_url}/console/login")
    page.fill("input[name=token]", "tl_wrong")
    page.click("button[type=submit]")
    assert "/console/login" in page.url and "not valid" in page.inner_text("[role=alert]")
    assert "tl_wrong" not in page.url
    page.close()


def test_an_operator_signs_in_approves_a_candidate_and_sees_production_change(browser, admin_world) -> None:
    candidate = admin_world.candidates[0]
    context, page, errors = signed_in(browser, admin_world, "olga")
    session = next(c for c in context.cookies() if c["name"] == "tuneloop_session")
    assert session["httpOnly"] and session["sameSite"] == "Strict"
    assert admin_world.tokens["olga"] not in session["value"]

    # The overview: production, the pending candidates, drift from the monitor, live accuracy drawn by Plotly.
    assert page.inner_text("#pending").count("awaiting_approval") == len(admin_world.candidates)
    assert "drift" in page.inner_text("#drift")
    page.wait_for_selector("#accuracy-plot .main-svg", timeout=30_000)

    page.click(f"#pending a[href='/console/versions/{candidate}']")
    page.wait_for_url(f"**/console/versions/{candidate}")
    gates = page.inner_text("#gates")
    assert "golden" in gates and "✔ pass" in gates
    assert page.locator("table.differences").count() == 2 and page.locator("table.confusion").count() == 4
    report = page.locator("a", has_text="report").first.get_attribute("href")
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    page.click("#approve-form button")  # the confirmation is not ticked: the browser refuses to submit
    assert page.url.endswith(f"/console/versions/{candidate}")
    assert admin_world.registry.state(candidate) == State.AWAITING_APPROVAL
    page.fill("#approve-form textarea[name=reason]", "gates passed and the differences read well")
    page.check("#approve-form input[name=confirm]")
    page.click("#approve-form button")
    page.wait_for_selector("[role=status]")
    assert page.inner_text("#state") == "production" and page.inner_text("#production") == candidate
    audit = page.inner_text("#audit")
    assert "olga" in audit and "gates passed and the differences read well (via the console)" in audit
    assert admin_world.registry.production() == candidate

    page.goto(f"{admin_world.admin_url}/console/audit")
    first = page.locator("#audit tr").nth(1).inner_text()
    assert candidate in first and "production" in first and "olga" in first

    # A drift report, shown from the console's own address in a sandbox.
    answer = page.goto(f"{admin_world.admin_url}{report}")
    assert answer.status == 200 and "sandbox" in answer.headers["content-security-policy"]
    assert errors == []
    context.close()


def test_a_viewer_sees_no_decision_and_a_forged_post_is_refused(browser, admin_world) -> None:
    candidate = admin_world.candidates[1]
    context, page, _ = signed_in(browser, admin_world, "vera")
    page.goto(f"{admin_world.admin_url}/console/versions/{candidate}")
    assert page.inner_text("#state") == "awaiting_approval"
    assert page.locator("#approve-form").count() == 0 and page.locator("#reject-form").count() == 0
    assert page.locator("form[action='/console/retrain']").count() == 0
    forged = page.request.post(f"{admin_world.admin_url}/console/versions/{candidate}/approve",
                               form={"csrf": csrf_of(page), "confirm": "yes", "promote": "yes"})
    assert forged.status == 403 and "only an operator" in forged.text()
    assert admin_world.registry.state(candidate) == State.AWAITING_APPROVAL
    context.close()


@pytest.mark.parametrize("csrf", [None, "forged-token"])
def test_a_post_without_the_sessions_csrf_token_is_refused(browser, admin_world, csrf) -> None:
    candidate = admin_world.candidates[1]
    context, page, _ = signed_in(browser, admin_world, "olga")
    form = {"confirm": "yes", "reason": "no csrf"} | ({"csrf": csrf} if csrf else {})
    answer = page.request.post(f"{admin_world.admin_url}/console/versions/{candidate}/reject", form=form)
    assert answer.status == 403 and "CSRF" in answer.text()
    assert admin_world.registry.state(candidate) == State.AWAITING_APPROVAL
    context.close()


def test_what_operators_write_is_shown_escaped(browser, admin_world) -> None:
    candidate = admin_world.candidates[1]
    context, page, _ = signed_in(browser, admin_world, "olga")
    page.goto(f"{admin_world.admin_url}/console/versions/{candidate}")
    reason = "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=1</script>"
    page.fill("#reject-form textarea[name=reason]", reason)
    page.check("#reject-form input[name=confirm]")
    page.click("#reject-form button")
    page.wait_for_selector("[role=status]")
    assert page.inner_text("#state") == "rejected"
    for url in (f"/console/versions/{candidate}", "/console/audit"):
        page.goto(f"{admin_world.admin_url}{url}")
        assert reason in page.inner_text("#audit")  # shown as text
        assert page.evaluate("window.pwned") is None and page.locator("#audit img").count() == 0
    context.close()


def test_an_operator_rolls_production_back_from_the_overview(browser, admin_world) -> None:
    promoted = admin_world.candidates[0]  # by the approval above
    assert admin_world.registry.production() == promoted
    context, page, _ = signed_in(browser, admin_world, "olga")
    assert f"Roll back {promoted} to v1" in page.inner_text("#rollback-form")
    page.fill("#rollback-form textarea[name=reason]", "live accuracy fell")
    page.check("#rollback-form input[name=confirm]")
    page.click("#rollback-form button")
    page.wait_for_selector("[role=status]")
    assert f"{promoted} rolled back; v1 is in production" in page.inner_text("[role=status]")
    assert admin_world.registry.production() == "v1"
    assert admin_world.registry.audit_log(promoted)[-1].actor == "olga"
    context.close()
