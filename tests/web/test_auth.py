from __future__ import annotations

import httpx
import pytest

from tests.support.clock import WallClock
from tests.support.http import TEST_PASSWORD, StartService
from web.http.throttle import LoginThrottle


async def test_login_returns_a_token_that_opens_the_api(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/auth", json={"password": TEST_PASSWORD})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"token", "expiresAt"}
    assert body["expiresAt"].endswith("Z")
    jobs = await client.get("/api/jobs", headers={"Authorization": f"Bearer {body['token']}"})
    assert jobs.status_code == 200
    assert jobs.json() == []


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({}, "Log in first: this needs a bearer token."),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "Log in first: this needs a bearer token."),
        ({"Authorization": "Bearer"}, "Log in first: this needs a bearer token."),
        ({"Authorization": "Bearer v1.e30.AAAA"}, "That token is not valid; log in again."),
    ],
)
async def test_api_without_a_valid_token_is_401_json(
    client: httpx.AsyncClient, headers: dict[str, str], message: str
) -> None:
    response = await client.get("/api/jobs", headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {"error": message}


async def test_token_expires_after_a_day(
    client: httpx.AsyncClient, token: str, wall_clock: WallClock
) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    wall_clock.advance(24 * 3600 - 1)
    assert (await client.get("/api/jobs", headers=headers)).status_code == 200
    wall_clock.advance(1)
    response = await client.get("/api/jobs", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": "Your session has expired; log in again."}


async def test_token_survives_a_restart(start_service, config) -> None:  # type: ignore[no-untyped-def]
    first = await start_service(auth_password=None)
    async with httpx.AsyncClient(base_url=first.url) as http:
        password = first.state.credentials.password
        token = (await http.post("/api/auth", json={"password": password})).json()["token"]
    second = await start_service(auth_password=None)
    assert second.state.credentials.password == password
    async with httpx.AsyncClient(base_url=second.url) as http:
        response = await http.get("/api/jobs", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", 'Send JSON like {"password": "..."}: the body is not JSON in UTF-8.'),
        (b"not json", 'Send JSON like {"password": "..."}: the body is not JSON in UTF-8.'),
        (b'{"pass": "x"}', 'Send JSON like {"password": "..."}: the password is missing.'),
        (b'{"password": 12}', 'Send JSON like {"password": "..."}: the password is missing.'),
        (b'["password"]', 'Send JSON like {"password": "..."}: the password is missing.'),
        (b"null", 'Send JSON like {"password": "..."}: the password is missing.'),
        (b'"password"', 'Send JSON like {"password": "..."}: the password is missing.'),
        (b"1e999999", 'Send JSON like {"password": "..."}: the password is missing.'),
        (b'{"password": ""}', 'Send JSON like {"password": "..."}: the password is missing.'),
        (b'{"password": null}', 'Send JSON like {"password": "..."}: the password is missing.'),
        (
            b'{"password": {"$ne": ""}}',
            'Send JSON like {"password": "..."}: the password is missing.',
        ),
        (b'{"password": ["x"]}', 'Send JSON like {"password": "..."}: the password is missing.'),
    ],
)
async def test_login_without_a_password_is_400(
    client: httpx.AsyncClient, body: bytes, message: str
) -> None:
    response = await client.post(
        "/api/auth", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json() == {"error": message}


async def test_wrong_password_is_401(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/auth", json={"password": "nope"})
    assert response.status_code == 401
    assert response.json() == {"error": "That password is not right."}


async def test_repeated_wrong_passwords_are_throttled(
    client: httpx.AsyncClient, wall_clock: WallClock
) -> None:
    # Five failures within the minute lock the client out for 60 s.
    for _ in range(5):
        assert (await client.post("/api/auth", json={"password": "guess"})).status_code == 401
    locked = await client.post("/api/auth", json={"password": TEST_PASSWORD})
    assert locked.status_code == 429
    assert locked.headers["retry-after"] == "60"
    assert locked.json() == {"error": "Too many wrong passwords; try again in 60 seconds."}
    wall_clock.advance(59)
    assert (await client.post("/api/auth", json={"password": TEST_PASSWORD})).status_code == 429
    wall_clock.advance(1)
    assert (await client.post("/api/auth", json={"password": TEST_PASSWORD})).status_code == 200


def test_throttle_forgets_failures_outside_the_window() -> None:
    throttle = LoginThrottle(max_failures=3, window_s=60, lockout_s=30)
    throttle.record_failure("a", 0)
    throttle.record_failure("a", 30)
    throttle.record_failure("a", 61)  # the first has left the window: two in it
    assert throttle.retry_after_s("a", 61) == 0
    throttle.record_failure("a", 62)
    assert throttle.retry_after_s("a", 62) == 30
    assert throttle.retry_after_s("b", 62) == 0


def test_successful_login_clears_failures() -> None:
    throttle = LoginThrottle(max_failures=2)
    throttle.record_failure("a", 0)
    throttle.record_success("a")
    throttle.record_failure("a", 1)
    assert throttle.retry_after_s("a", 1) == 0


def test_throttle_memory_is_bounded() -> None:
    throttle = LoginThrottle(max_failures=2, max_clients=100)
    for number in range(1000):
        throttle.record_failure(f"client-{number}", 0)
    assert len(throttle._failures) == 100
    # The newest clients are the ones remembered.
    throttle.record_failure("client-999", 1)
    assert throttle.retry_after_s("client-999", 1) > 0


async def test_oversized_login_body_is_413(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/auth", json={"password": "x" * 10_000})
    assert response.status_code == 413
    assert response.json() == {
        "error": "A login request is a small JSON object; this one is too large."
    }


async def test_a_forged_client_header_of_kilobytes_is_one_short_key(
    start_service: StartService,
) -> None:
    """Behind a proxy the throttle keys on its header, which a client may forge: long
    values are cut, so they can neither flood its memory nor dodge its count."""
    service = await start_service(client_ip_header="X-Client-IP")
    async with httpx.AsyncClient(base_url=service.url) as http:
        for attempt in range(6):
            # 8 KB: as long as a header block of 16 KiB (the limit) lets it be.
            forged = "1.2.3.4" + "x" * 8_000 + str(attempt)  # a new "client" each time
            answer = await http.post(
                "/api/auth", json={"password": "wrong"}, headers={"X-Client-IP": forged}
            )
        assert answer.status_code == 429
