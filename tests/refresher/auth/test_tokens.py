from __future__ import annotations

import base64
import json

import pytest

from refresher.auth import tokens
from refresher.auth.credentials import Credentials

SECRET = b"k" * 32
NOW = 1_800_000_000.0


def test_issued_token_verifies_until_it_expires() -> None:
    token = tokens.issue(SECRET, scope="session", now=NOW, ttl_s=24 * 3600)
    assert token.expires_at == int(NOW) + 86_400
    verified = tokens.verify(SECRET, token.value, scope="session", now=NOW + 86_399)
    assert verified == token
    with pytest.raises(tokens.TokenExpired, match=r"^token expired at 1800086400$"):
        tokens.verify(SECRET, token.value, scope="session", now=NOW + 86_400)


def test_token_from_another_secret_is_rejected() -> None:
    token = tokens.issue(b"other secret", scope="session", now=NOW, ttl_s=60)
    with pytest.raises(tokens.TokenError, match=r"^token signature does not match$"):
        tokens.verify(SECRET, token.value, scope="session", now=NOW)


def test_extending_expiry_in_payload_breaks_the_signature() -> None:
    token = tokens.issue(SECRET, scope="session", now=NOW, ttl_s=60)
    version, _, signature = token.value.split(".")
    forged_payload = json.dumps({"scope": "session", "exp": int(NOW) + 10**6}).encode()
    forged = ".".join(
        [version, base64.urlsafe_b64encode(forged_payload).decode().rstrip("="), signature]
    )
    with pytest.raises(tokens.TokenError, match=r"^token signature does not match$"):
        tokens.verify(SECRET, forged, scope="session", now=NOW)


def test_token_is_bound_to_its_scope() -> None:
    token = tokens.issue(SECRET, scope="download:job-1", now=NOW, ttl_s=60)
    assert tokens.verify(SECRET, token.value, scope="download:job-1", now=NOW).scope == (
        "download:job-1"
    )
    with pytest.raises(tokens.TokenError, match=r"^token is not valid for download:job-2$"):
        tokens.verify(SECRET, token.value, scope="download:job-2", now=NOW)
    with pytest.raises(tokens.TokenError, match=r"^token is not valid for session$"):
        tokens.verify(SECRET, token.value, scope="session", now=NOW)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", r"^token is malformed$"),
        ("a.b", r"^token is malformed$"),
        ("a.b.c.d", r"^token is malformed$"),
        ("v2.e30.AAAA", r"^token has an unknown version$"),
        ("v1.e30.!!!!", r"^token signature (is malformed|is not in canonical form)$"),
        ("v1.e30.AAAA", r"^token signature does not match$"),
    ],
)
def test_malformed_tokens_are_rejected(value: str, message: str) -> None:
    with pytest.raises(tokens.TokenError, match=message):
        tokens.verify(SECRET, value, scope="session", now=NOW)


def test_validly_signed_garbage_payload_is_rejected() -> None:
    payload = base64.urlsafe_b64encode(b"[1, 2]").decode().rstrip("=")
    signed_part = f"v1.{payload}"
    signature = base64.urlsafe_b64encode(tokens._sign(SECRET, signed_part)).decode().rstrip("=")
    with pytest.raises(tokens.TokenError, match=r"^token payload is malformed$"):
        tokens.verify(SECRET, f"{signed_part}.{signature}", scope="session", now=NOW)


@pytest.mark.parametrize(
    ("secret", "ttl_s", "message"),
    [(b"", 60, r"^secret must not be empty$"), (SECRET, 0, r"^ttl_s must be > 0$")],
)
def test_issue_checks_its_arguments(secret: bytes, ttl_s: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tokens.issue(secret, scope="session", now=NOW, ttl_s=ttl_s)


def test_link_scopes_name_one_job_and_one_purpose_each() -> None:
    scopes = [
        tokens.job_scope(job, purpose)
        for job in ("job-1", "job-2")
        for purpose in tokens.JOB_PURPOSES
    ]
    scopes += [tokens.output_scope("job-1", "out-1"), tokens.output_scope("job-2", "out-1")]
    scopes += [tokens.EVENTS_SCOPE, tokens.SESSION_SCOPE]
    # 2 jobs x 4 purposes + 2 outputs + the all-jobs stream + a login: 12, all different.
    assert len(set(scopes)) == 12
    token = tokens.issue(SECRET, scope=tokens.job_scope("job-1", "download"), now=NOW, ttl_s=60)
    with pytest.raises(tokens.TokenError, match=r"^token is not valid for thumbnail:job-1$"):
        tokens.verify(SECRET, token.value, scope=tokens.job_scope("job-1", "thumbnail"), now=NOW)


def test_an_unknown_purpose_is_refused() -> None:
    with pytest.raises(
        ValueError,
        match=r"^purpose must be one of download, thumbnail, events, stills; got 'zip'$",
    ):
        tokens.job_scope("job-1", "zip")


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # NOW is 500 000 whole hours; a link lives at least an hour, to a whole hour.
        (NOW, NOW + 3600),
        (NOW + 1, NOW + 7200),
        (NOW + 3599.5, NOW + 7200),
        (NOW + 3600, NOW + 7200),
    ],
)
def test_link_expiry_is_rounded_up_to_a_whole_bucket(now: float, expected: float) -> None:
    assert tokens.link_expiry(now, 3600, 3600) == int(expected)


def test_links_minted_within_one_bucket_are_the_same() -> None:
    scope = tokens.job_scope("job-1", "thumbnail")
    values = {
        tokens.issue_until(SECRET, scope=scope, expires_at=tokens.link_expiry(now, 3600, 3600))
        for now in (NOW + 1, NOW + 1800, NOW + 3600)
    }
    assert len(values) == 1


def test_a_scope_with_a_lone_surrogate_is_refused_not_an_error() -> None:
    token = tokens.issue(SECRET, scope=tokens.job_scope("job-1", "events"), now=NOW, ttl_s=60)
    with pytest.raises(tokens.TokenError, match=r"^token is not valid for events:\ud800$"):
        tokens.verify(SECRET, token.value, scope=tokens.job_scope("\ud800", "events"), now=NOW)


def _other_spellings(part: str) -> list[str]:
    """Spellings of a base64url part that decode to the same bytes: padded, with junk
    appended, and with the unused low bits of its last character set."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spare_bits = {2: 4, 3: 2}.get(len(part) % 4, 0)  # bits the last character carries spare
    spellings = [part + "=", part + "==", part + "!", part + "==junk"]
    if spare_bits:
        last = alphabet.index(part[-1])
        spellings.append(part[:-1] + alphabet[last | ((1 << spare_bits) - 1)])
    return [spelling for spelling in spellings if spelling != part]


def test_a_token_has_one_spelling() -> None:
    token = tokens.issue(SECRET, scope="session", now=NOW, ttl_s=60)
    version, payload, signature = token.value.split(".")
    variants = [f"{version}.{payload}.{other}" for other in _other_spellings(signature)]
    variants += [f"{version}.{other}.{signature}" for other in _other_spellings(payload)]
    for variant in variants:
        with pytest.raises(tokens.TokenError):
            tokens.verify(SECRET, variant, scope="session", now=NOW)
    assert tokens.verify(SECRET, token.value, scope="session", now=NOW) == token


def test_the_signing_key_changes_with_the_password_alone() -> None:
    first = Credentials("first password", b"kept secret", "environment")
    second = Credentials("second password", b"kept secret", "environment")
    again = Credentials("first password", b"kept secret", "environment")
    assert first.signing_key != second.signing_key
    assert first.signing_key == again.signing_key
    token = tokens.issue(first.signing_key, scope="session", now=NOW, ttl_s=60)
    with pytest.raises(tokens.TokenError, match=r"^token signature does not match$"):
        tokens.verify(second.signing_key, token.value, scope="session", now=NOW)
