"""The admin API on a real `tuneloop adapt`: who may read and write, what each write does to the registry and
its audit log, what bad requests get, and that tokens never leak."""

from __future__ import annotations

import httpx
import pytest

from tuneloop.registry import State


def client(world, name: str | None = None, token: str | None = None) -> httpx.Client:
    headers = {}
    if name or token:
        headers["Authorization"] = f"Bearer {token or world.tokens[name]}"
    return httpx.Client(base_url=f"{world.admin_url}/admin/api", headers=headers, timeout=30)


def test_reads_need_a_valid_token(admin_world) -> None:
    for who in (client(admin_world), client(admin_world, token="tl_not-a-token")):
        answer = who.get("/versions")
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
        assert answer.json()["error"]
    basic = httpx.get(f"{admin_world.admin_url}/admin/api/versions", auth=("olga", admin_world.tokens["olga"]))
    assert basic.status_code == 401  # only bearer tokens


def test_a_viewer_reads_everything_and_changes_nothing(admin_world) -> None:
    vera = client(admin_world, "vera")
    assert vera.get("/whoami").json() == {"name": "vera", "role": "viewer"}
    rows = vera.get("/versions").json()
    candidate = admin_world.candidates[0]
    assert {r["version"]: r["state"] for r in rows}[candidate] == "awaiting_approval"
    for path, body in ((f"/versions/{candidate}/approve", {}), (f"/versions/{candidate}/reject", {"reason": "x"}),
                       (f"/versions/{candidate}/promote", {}), ("/rollback", {}), ("/retrain", {"reason": "x"}),
                       (f"/versions/{candidate}/reject", {"bad": "body"})):  # refused before the body is read
        answer = vera.post(path, json=body)
        assert answer.status_code == 403, (path, answer.text)
        assert "only an operator" in answer.json()["error"]
    assert admin_world.registry.state(candidate) == State.AWAITING_APPROVAL


def test_a_candidate_reads_with_its_gates_and_its_differences_against_production(admin_world) -> None:
    vera = client(admin_world, "vera")
    candidate = admin_world.candidates[0]
    detail = vera.get(f"/versions/{candidate}").json()
    assert detail["state"] == "awaiting_approval" and detail["actions"] == ["approve", "reject"]
    assert detail["card"]["gates"]["passed"] is True and detail["card"]["lineage"]["parent_version"] == "v1"
    assert [e["to_state"] for e in detail["audit"]] == ["candidate", "awaiting_approval"]
    differences = {d["test_set"]: d for d in detail["differences"]}
    assert set(differences) == {"fresh", "v1/test"}
    fresh = differences["fresh"]
    accuracy = {m["metric"]: m for m in fresh["metrics"]}["accuracy"]
    gate = next(g for g in detail["card"]["gates"]["results"] if g["name"] == "golden")["figures"]["v1/test"]
    v1 = {m["metric"]: m for m in differences["v1/test"]["metrics"]}["accuracy"]
    assert (v1["production"], v1["candidate"]) == (gate["production"], gate["candidate"])
    assert accuracy["change"] == pytest.approx(accuracy["candidate"] - accuracy["production"], abs=1e-4)
    assert sum(map(sum, fresh["confusion_candidate"])) == fresh["n"] > 0
    assert vera.get(f"/versions/{candidate}/differences").json() == detail["differences"]
    assert vera.get("/versions/v999").status_code == 404
    assert vera.get("/versions/..%2Fetc").status_code in (404, 422)


def test_status_accuracy_drift_and_audit(admin_world) -> None:
    vera = client(admin_world, "vera")
    status = vera.get("/status").json()
    assert status["production"] == "v1" and "waiting_triggers" in status
    accuracy = vera.get("/accuracy", params={"hours": 2}).json()
    (series,) = accuracy["series"]  # the fed feedback: v1's predictions, all "1"
    assert series["version"] == "v1" and sum(p["n"] for p in series["points"]) == 80 * len(admin_world.candidates)
    drift = vera.get("/drift").json()
    assert drift["error"] is None and drift["versions"][0]["drift"] is True
    audit = vera.get("/audit", params={"limit": 3}).json()
    assert len(audit) == 3 and audit[0]["at"] >= audit[-1]["at"]
    assert vera.get("/accuracy", params={"hours": -1}).status_code == 422


def test_an_operator_rejects_with_a_reason_and_is_the_audited_actor(admin_world) -> None:
    olga = client(admin_world, "olga")
    candidate = admin_world.candidates[-1]
    for body in ({}, {"reason": ""}, {"reason": "   "}, {"reason": "x" * 2001}, {"reason": "ok", "extra": 1}):
        answer = olga.post(f"/versions/{candidate}/reject", json=body)
        assert answer.status_code == 422, (body, answer.text)
    answer = olga.post(f"/versions/{candidate}/reject", json={"reason": "recall on negatives is too low"})
    assert answer.status_code == 200 and answer.json()["state"] == "rejected"
    entry = admin_world.registry.audit_log(candidate)[-1]
    assert (entry.to_state, entry.actor) == ("rejected", "olga")
    assert entry.reason == "recall on negatives is too low (via the admin API)"
    again = olga.post(f"/versions/{candidate}/approve", json={})
    assert again.status_code == 409 and "rejected" in again.json()["error"]


def test_an_operator_approves_promotes_and_rolls_back(admin_world) -> None:
    olga = client(admin_world, "olga")
    candidate = admin_world.candidates[0]
    assert olga.post(f"/versions/{candidate}/promote", json={}).status_code == 409  # not approved yet
    approved = olga.post(f"/versions/{candidate}/approve", json={"reason": "gates and diffs read"})
    assert approved.json() == {"version": candidate, "state": "approved", "production": "v1"}
    promoted = olga.post(f"/versions/{candidate}/promote", json={})
    assert promoted.json() == {"version": candidate, "state": "production", "production": candidate}
    wrong = olga.post("/rollback", json={"expect": "v1", "reason": "stale page"})
    assert wrong.status_code == 409  # production is no longer v1: nothing is rolled back by mistake
    back = olga.post("/rollback", json={"expect": candidate, "reason": "live accuracy fell"})
    assert back.json() == {"pulled": candidate, "restored": "v1"}
    entries = [(e.version, e.to_state, e.actor) for e in admin_world.registry.audit_log()[-5:]]
    assert entries == [(candidate, "approved", "olga"), ("v1", "retired", "olga"), (candidate, "production", "olga"),
                       (candidate, "rolled_back", "olga"), ("v1", "production", "olga")]


def test_an_operator_asks_for_a_retraining(admin_world) -> None:
    olga = client(admin_world, "olga")
    assert olga.post("/retrain", json={"reason": ""}).status_code == 422
    answer = olga.post("/retrain", json={"reason": "the yelp launch"})
    assert answer.status_code == 202
    waiting = client(admin_world, "vera").get("/status").json()["waiting_triggers"]
    mine = [t for t in waiting if t["id"] == answer.json()["trigger"]]
    assert mine and mine[0]["kind"] == "manual" and mine[0]["actor"] == "olga"


def test_the_openapi_spec_describes_the_routes_and_their_security(admin_world) -> None:
    spec = httpx.get(f"{admin_world.admin_url}/admin/api/openapi.json", timeout=10).json()
    paths = spec["paths"]
    assert {"/admin/api/versions", "/admin/api/versions/{version}/approve", "/admin/api/rollback",
            "/admin/api/retrain", "/admin/api/audit"} <= set(paths)
    assert not any(p.startswith("/console") for p in paths)
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_tokens_never_reach_the_log(admin_world) -> None:
    log = admin_world.log_text()
    assert "admin" in log  # the adapter did log its start
    assert not any(token in log for token in admin_world.tokens.values())
