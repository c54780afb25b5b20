"""The web dashboard (/ui) and /docs in a real browser: Debian's Chromium, headless, driven by
Playwright, against a live gateway (access control on) serving the demo model from its own
engine and from a `stratus worker` that registers with it.

An admin signs in with the API key, creates a key and sees its secret once, revokes it, sees
usage appear after API calls, filters the audit log and verifies the chain, sees the worker's
replica turn unhealthy when the worker is killed, and chats in the playground. A member who signs
in cannot reach admin data: the API refuses it and the page says so. No page breaks the CSP, and
/docs renders with every request outside this gateway blocked. Each page's screenshot goes to
$STRATUS_ARTIFACTS/dashboard (else a temporary directory); with STRATUS_UPDATE_SCREENSHOTS=1
also to docs/images/.

Needs Chromium at /usr/bin/chromium (`make browser` installs Debian's package when run as root);
without it the module is skipped and says so.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path

import httpx
import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from stratus.config import Settings, demo_model_path
from tests import issued
from tests.browser import Tab, chromium, chromium_path, expect, screenshot, screenshot_dirs
from tests.live_server import LiveServer
from tests.waiting import wait_for
from tests.worker_process import WorkerProcess

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]

if chromium_path() is None:
    pytest.skip(
        "no Chromium: install Debian's (`make browser`, or apt-get install -y chromium) or set STRATUS_CHROMIUM",
        allow_module_level=True,
    )
pytest.importorskip("playwright.sync_api", reason="pip install -e '.[test]' (playwright)")

DEMO = demo_model_path()
ISSUER = "https://idp.example.test"
IDP_KEY = ec.generate_private_key(ec.SECP256R1())  # the identity provider's signing key


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> list[Path]:
    return screenshot_dirs(tmp_path_factory)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory, admin_key):
    from stratus.api import create_app
    from stratus.api.auth import build_access
    from stratus.security.bootstrap import bootstrap
    from stratus.security.stage import IdentityStage

    secret = issued.record(secrets.token_urlsafe(32))
    data_dir = issued.data_dir_of(tmp_path_factory.mktemp("dashboard-gw"))
    jwks = tmp_path_factory.mktemp("idp") / "jwks.json"
    jwk = ECAlgorithm.to_jwk(IDP_KEY.public_key(), as_dict=True) | {"kid": "k1", "alg": "ES256", "use": "sig"}
    jwks.write_text(json.dumps({"keys": [jwk]}))
    settings = Settings(
        jwt_issuer=ISSUER,  # OIDC tokens from this issuer: its "auditors" group is the auditor role
        jwt_audience="stratus",
        jwt_jwks=str(jwks),
        jwt_role_map="auditors=auditor",
        models={"demo": str(DEMO)},
        engine_isolation="thread",
        cluster_secret=secret,
        data_dir=str(data_dir),
        lockout_failures=3,  # test_alerts_...: three wrong keys from one address lock it out
        lockout_seconds=300,
    )
    access = build_access(settings)
    bootstrap(access.store, admin_key)
    app = create_app(settings, identity=IdentityStage(access))
    # Workers beat every 0.5 s (the gateway tells them at registration); one that misses three
    # and fails a probe is removed: about 2 s after a kill instead of 6.
    app.state.stratus.workers.interval = 0.5
    server = LiveServer(app).start()
    worker = None
    try:
        worker = WorkerProcess(
            "demo", str(DEMO), secret, "--engine-isolation", "thread", "--gateway", server.url
        )
        server.wait_ready()
        worker.wait_serving()
        replicas = app.state.stratus.registry.models["demo"].replicas
        wait_for(lambda: len(replicas.entries) == 2, "the worker registered", timeout=60)
        yield server, worker
    finally:
        if worker is not None:
            worker.stop()
        server.stop()


@pytest.fixture(scope="module")
def admin(gateway, admin_key) -> httpx.Client:
    server, _ = gateway
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def member_key(admin) -> str:
    assert admin.post("/admin/users", json={"name": "mia", "role": "member"}).status_code == 201
    assert admin.put("/admin/users/mia/models/demo").status_code == 200
    r = admin.post("/admin/keys", json={"name": "mia-laptop", "user": "mia"})
    assert r.status_code == 201
    return issued.record(r.json()["secret"])


@pytest.fixture(scope="module")
def browser():
    with chromium() as b:
        yield b


@pytest.fixture
def tab(browser, gateway):
    t = Tab(browser, gateway[0].url)
    yield t
    t.close()


def chat(url: str, key: str, text: str, stream: bool = False) -> httpx.Response:
    body = {
        "model": "demo",
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 8,
        "stream": stream,
    }
    return httpx.post(
        url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60
    )


def test_a_key_is_created_with_its_secret_shown_once_then_revoked(tab, gateway, admin_key, shots):
    url = gateway[0].url
    tab.sign_in(admin_key)
    tab.open("keys")
    page = tab.page
    create = page.locator("form", has=page.get_by_role("button", name="Create key"))
    create.locator("input[name=name]").fill("made-in-the-ui")
    create.get_by_role("button").click()
    shown = page.locator(".secret .secret-value")
    expect(shown).to_be_visible()
    secret = issued.record(shown.inner_text().strip())
    assert secret.startswith("sk-stratus-")
    row = page.locator("tr[data-key-name='made-in-the-ui']")
    expect(row).to_contain_text("active")
    screenshot(page, shots, "keys")
    assert httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 200

    page.click(".secret button.dismiss")
    expect(page.locator(".secret")).to_have_count(0)
    page.reload()  # signed in still (sessionStorage), and the secret is nowhere on the page
    tab.open("keys")
    expect(row).to_be_visible()
    assert secret not in page.content()

    # Limits of this key: two requests a minute, then 429; removed, it is free again.
    row.get_by_role("button", name="Limits").click()
    limits = page.locator("#limit-form")
    expect(limits.locator("select[name=scope]")).to_have_value("key")
    limits.locator("input[name=rpm]").fill("2")
    limits.get_by_role("button", name="Set limits").click()
    rule = page.locator("tr[data-limit^='key:']")
    expect(rule).to_contain_text("made-in-the-ui")
    answers = [
        chat(url, secret, issued.record_prompt(f"a limited key, call {i}")).status_code for i in range(3)
    ]
    assert answers == [200, 200, 429]
    rule.get_by_role("button", name="Remove").click()
    expect(rule).to_have_count(0)
    assert chat(url, secret, issued.record_prompt("a limited key, once the limit is gone")).status_code == 200

    page.once("dialog", lambda d: d.accept())
    row.get_by_role("button", name="Revoke").click()
    expect(row).to_contain_text("revoked")
    assert httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {secret}"}).status_code == 401


def test_usage_appears_after_api_calls_and_the_audit_log_filters_and_verifies(
    tab, gateway, admin_key, member_key, shots
):
    url = gateway[0].url
    tab.sign_in(admin_key)
    tab.open("usage")
    page = tab.page
    page.select_option("select[name=by]", "user")
    expect(page.locator("#page-usage")).to_be_visible()
    before = _requests_of(page, "mia")
    for i in range(3):
        assert (
            chat(url, member_key, issued.record_prompt(f"usage from the member, call {i}")).status_code == 200
        )
    # The page refreshes itself (no reload): mia's row counts the three requests.
    wait_for(lambda: _requests_of(page, "mia") >= before + 3, "mia's usage on the page", timeout=20)
    expect(page.locator("#page-usage figure.chart")).to_be_visible()
    screenshot(page, shots, "usage")
    with page.expect_download() as download:
        page.click("text=Export CSV")
    csv = Path(download.value.path()).read_text()
    assert csv.splitlines()[0].startswith("day,user,requests")
    assert any(line.split(",")[1] == "mia" for line in csv.splitlines()[1:])

    tab.open("audit")
    page.fill("#audit-filter input[name=principal]", "mia")
    page.select_option("#audit-filter select[name=outcome]", "ok")
    page.click("#audit-filter button[type=submit]")
    rows = page.locator("#page-audit tbody tr")
    expect(rows.first).to_contain_text("POST /v1/chat/completions")
    assert rows.count() >= 3
    for text in rows.all_inner_texts():
        assert "mia" in text and "ok" in text
    page.click("#verify-chain")
    expect(page.locator(".verdict")).to_contain_text(re.compile(r"Chain intact: \d+ records"))
    screenshot(page, shots, "audit")


def _requests_of(page, user: str) -> int:
    cell = page.locator(f"#page-usage tr[data-group='{user}'] td:nth-child(2)")
    return int(cell.inner_text().replace(",", "")) if cell.count() else 0


def test_the_playground_streams_a_chat_and_the_overview_counts_it(tab, gateway, admin_key, shots):
    tab.sign_in(admin_key)
    tab.open("playground")
    page = tab.page
    page.fill("input[name=max_tokens]", "12")
    page.fill("textarea[name=message]", issued.record_prompt("Tell me about the garden at Pemberley."))
    page.click(".chat-form button[type=submit]")
    expect(page.locator(".chat-form .form-status")).to_contain_text("completion tokens", timeout=60_000)
    assert page.locator(".msg.assistant .answer").inner_text().strip()
    screenshot(page, shots, "playground")

    tab.open("overview")
    expect(page.locator("#page-overview figure.chart")).to_have_count(4)
    expect(page.locator("[data-tile=total] strong")).not_to_have_text("0")
    for i in range(2):  # while the page is open: its next readings see them
        assert (
            chat(gateway[0].url, admin_key, issued.record_prompt(f"overview traffic, call {i}")).status_code
            == 200
        )
    expect(page.locator("[data-tile=ttft] strong")).to_contain_text("ms")
    expect(page.locator("[data-tile=tpot] strong")).to_contain_text("ms")
    screenshot(page, shots, "overview")


def test_a_killed_workers_replica_turns_unhealthy_without_a_reload(tab, gateway, admin_key, shots):
    _, worker = gateway
    tab.sign_in(admin_key)
    tab.open("models")
    page = tab.page
    replica = page.locator(f"tr[data-replica='{worker.id}']")
    expect(replica).to_have_attribute("data-state", "up")
    expect(page.locator("article[data-model=demo] h2")).to_contain_text("2 of 2 replicas up")
    screenshot(page, shots, "models")
    worker.kill9()
    expect(replica).not_to_have_attribute("data-state", "up", timeout=30_000)
    expect(page.locator("article[data-model=demo] h2")).to_contain_text("1 of 1 replicas up", timeout=30_000)
    screenshot(page, shots, "models-worker-killed")


def test_a_member_cannot_reach_admin_data(tab, gateway, member_key, shots):
    url = gateway[0].url
    tab.sign_in(member_key)
    page = tab.page
    nav = page.locator("#nav")
    expect(nav).to_contain_text("Playground")
    for hidden in ("Audit log", "Users & teams", "Alerts", "Overview"):
        expect(nav).not_to_contain_text(hidden)
    for name, path in (("audit", "/admin/audit"), ("users", "/admin/users"), ("models", "/admin/cluster")):
        tab.open(name)  # typed into the address bar: the page asks, the API refuses
        expect(page.locator(f"#page-{name} .refusal").first).to_contain_text("403")
        assert httpx.get(url + path, headers={"Authorization": f"Bearer {member_key}"}).status_code == 403
    screenshot(page, shots, "member-refused")
    tab.open("keys")  # their own keys only
    expect(page.locator("tr[data-key-name='mia-laptop']")).to_be_visible()
    expect(page.locator("#page-keys tbody tr")).to_have_count(1)


def test_a_lockout_alert_is_acknowledged_and_lifted_and_a_key_reinstated(
    tab, gateway, admin, member_key, admin_key, shots
):
    url = gateway[0].url
    attacker = httpx.Client(
        base_url=url, transport=httpx.HTTPTransport(local_address="127.0.0.7"), timeout=30
    )
    with attacker:
        for _ in range(3):
            guess = issued.record(f"sk-stratus-{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}")
            assert attacker.get("/v1/models", headers={"Authorization": f"Bearer {guess}"}).status_code == 401
        admin_there = {"Authorization": f"Bearer {admin_key}"}
        assert attacker.get("/v1/models", headers=admin_there).status_code == 429  # locked out
        tab.sign_in(admin_key)
        tab.open("alerts")
        page = tab.page
        lockout = page.locator("tr[data-source='addr:127.0.0.7']")
        alert = page.locator("tr[data-alert='lockout addr:127.0.0.7']")
        expect(lockout).to_be_visible()
        alert.get_by_role("button", name="Acknowledge").click()
        expect(alert).to_have_attribute("data-acknowledged", "yes")
        expect(alert).to_contain_text("by admin")
        screenshot(page, shots, "alerts")
        lockout.get_by_role("button", name="Lift").click()
        expect(lockout).to_have_count(0)
        assert attacker.get("/v1/models", headers=admin_there).status_code == 200

    # A key suspended after an alert (what --alert-suspend does when one fires), reinstated here.
    r = admin.post("/admin/keys", json={"name": "suspect", "user": "mia"})
    key_id, suspect = r.json()["key"]["id"], issued.record(r.json()["secret"])
    suspensions = gateway[0].app.state.stratus.audit.review.suspensions
    assert suspensions.suspend(key_id, "rate_spike", {"count": 400, "baseline": 12.0})

    def status_of_suspect() -> int:
        return httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {suspect}"}).status_code

    # Suspensions are seen within their cache TTL (2 s; a refresh already running may miss one).
    wait_for(lambda: status_of_suspect() == 403, "the key refused while suspended", timeout=15, every=0.5)
    suspended = page.locator(f"#page-alerts tr[data-key-id='{key_id}']")
    expect(suspended).to_contain_text("rate_spike")
    suspended.get_by_role("button", name="Reinstate").click()
    expect(suspended).to_have_count(0)
    wait_for(lambda: status_of_suspect() == 200, "the reinstated key accepted", timeout=15, every=0.5)


def test_the_users_page_creates_a_team_adds_a_member_and_grants_a_model(
    tab, admin, admin_key, member_key, shots
):
    tab.sign_in(admin_key)
    tab.open("users")
    page = tab.page
    expect(page.locator("tr[data-user=mia]")).to_contain_text("member")
    create = page.locator("form", has=page.get_by_role("button", name="Create team"))
    create.locator("input[name=name]").fill("austen")
    create.get_by_role("button").click()
    expect(page.locator("tr[data-team=austen]")).to_be_visible()
    add = page.locator("form", has=page.get_by_role("button", name="Add to team"))
    add.locator("input[name=team]").fill("austen")
    add.locator("input[name=user]").fill("mia")
    add.get_by_role("button").click()
    expect(page.locator("tr[data-team=austen]")).to_contain_text("mia")
    expect(page.locator("tr[data-user=mia]")).to_contain_text("austen (member)")
    grant = page.locator("form", has=page.get_by_role("button", name="Grant model"))
    grant.locator("select[name=kind]").select_option("team")
    grant.locator("input[name=name]").fill("austen")
    grant.locator("input[name=model]").fill("demo")
    grant.get_by_role("button").click()
    chip = page.locator("tr[data-team=austen] [data-grant=demo]")
    expect(chip).to_be_visible()
    assert admin.get("/admin/teams/austen").json()["models"] == ["demo"]
    chip.get_by_role("button").click()  # withdraw it
    expect(chip).to_have_count(0)
    assert admin.get("/admin/teams/austen").json()["models"] == []
    screenshot(page, shots, "users")


def test_an_oidc_token_signs_in_an_auditor_who_reads_the_audit_log(tab, gateway, shots):
    url = gateway[0].url
    claims = {
        "iss": ISSUER,
        "aud": "stratus",
        "sub": "olga",
        "exp": int(time.time()) + 600,
        "groups": ["auditors"],
    }
    token = issued.record(pyjwt.encode(claims, IDP_KEY, algorithm="ES256", headers={"kid": "k1"}))
    tab.sign_in(token)
    page = tab.page
    expect(page.locator("#who")).to_contain_text(f"oidc:{ISSUER}:olga (auditor")
    expect(page.locator("#nav")).to_contain_text("Audit log")
    expect(page.locator("#nav")).not_to_contain_text("Playground")  # an auditor calls no model
    tab.open("audit")
    expect(page.locator("#page-audit tbody tr").first).to_be_visible()
    expect(page.locator("#page-audit .refusal")).to_have_count(0)
    tab.open("alerts")  # reads alerts; acknowledging one is an admin's
    expect(page.locator("#page-alerts")).to_contain_text("Recent alerts")
    expect(page.locator("#page-alerts .refusal")).to_have_count(0)
    ack = {"kind": "lockout", "source": "addr:127.0.0.7", "at": 1.0}
    r = httpx.post(url + "/admin/alerts/ack", json=ack, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403


def test_a_team_admin_sees_their_team_only(tab, admin, shots):
    assert admin.post("/admin/teams", json={"name": "bronte"}).status_code == 201
    for name, role in (("tess", "team_admin"), ("ben", "member")):
        r = admin.post("/admin/users", json={"name": name, "team": "bronte", "team_role": role})
        assert r.status_code == 201, r.text
    assert (
        admin.post("/admin/keys", json={"name": "ben-ci", "user": "ben", "team": "bronte"}).status_code == 201
    )
    r = admin.post("/admin/keys", json={"name": "tess-laptop", "user": "tess", "team": "bronte"})
    tab.sign_in(issued.record(r.json()["secret"]))
    page = tab.page
    expect(page.locator("#who")).to_contain_text("team admin of bronte")
    tab.open("users")
    expect(page.locator("tr[data-user=ben]")).to_be_visible()
    expect(page.locator("tr[data-user=admin]")).to_have_count(0)
    expect(page.locator("tr[data-team]")).to_have_count(1)
    tab.open("keys")
    expect(page.locator("tr[data-key-name='ben-ci']")).to_be_visible()
    expect(page.locator("tr[data-key-name='bootstrap admin key']")).to_have_count(0)
    screenshot(page, shots, "team-admin-keys")


def test_a_gateway_without_access_control_needs_no_sign_in(browser, tmp_path):
    from stratus.api import create_app
    from stratus.security.stage import OPEN_ACCESS

    settings = Settings(auth=False, local_models=False, data_dir=str(tmp_path))
    with LiveServer(create_app(settings, identity=OPEN_ACCESS)) as server:
        t = Tab(browser, server.url)
        t.page.goto(server.url + "/ui")
        page = t.page
        expect(page.locator("#who")).to_contain_text("access control is off")
        expect(page.locator("#signin")).to_be_hidden()
        expect(page.locator("#nav a")).to_have_text(["Overview", "Models", "Playground"])
        expect(page.locator("[data-tile=total] strong")).not_to_have_text("0")  # its own /metrics calls
        # A hidden tab polls nothing (each poll would be an audited request on a real gateway);
        # shown again, it refreshes at once.
        polls: list[str] = []
        page.on("request", lambda r: polls.append(r.url) if r.url.endswith("/metrics") else None)
        hide = "hidden => { Object.defineProperty(document, 'hidden', {value: hidden, configurable: true});"
        hide += " document.dispatchEvent(new Event('visibilitychange')); }"
        page.evaluate(hide, True)
        page.wait_for_timeout(2500)  # more than one polling period of the overview (2 s)
        assert polls == []
        with page.expect_request(lambda r: r.url.endswith("/metrics"), timeout=1500):
            page.evaluate(hide, False)
        t.open("models")
        expect(page.locator("#page-models")).to_contain_text("No models are served.")
        t.close()


def test_docs_render_with_every_outside_request_blocked(browser, gateway, shots):
    url = gateway[0].url
    t = Tab(browser, url)
    outside: list[str] = []

    def only_this_gateway(route):
        if route.request.url.startswith(url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    t.context.route("**/*", only_this_gateway)
    t.page.goto(url + "/docs")
    expect(t.page.locator(".swagger-ui .info .title")).to_contain_text("stratus")
    expect(t.page.locator(".opblock").first).to_be_visible()
    screenshot(t.page, shots, "docs", full_page=False)
    t.close()
    assert outside == []
