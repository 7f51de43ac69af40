"""Builds contracts/signing-vectors.json from contracts/signing.py (`make signing-vectors`)."""

import json
from pathlib import Path
from typing import Any

from contracts.reasons import DeadLetterReason
from contracts.signing import (
    KEY_ID_HEADER,
    SCHEME,
    SIGNATURE_HEADER,
    SIGNED_AT_HEADER,
    Keyring,
    SignatureLimits,
    SigningKey,
    signature_headers,
)

VECTORS_FILE = Path(__file__).resolve().parents[2] / "contracts" / "signing-vectors.json"
T0 = 1_800_000_000  # 2027-01-15T08:00:00Z
LIMITS = SignatureLimits()
# Secrets for these vectors only: published, never accepted by any real deployment.
KEYRING = {
    "portal-web": {
        "current": {"id": "vectors-web-2", "secret": "vectors-only-portal-web-2-not-a-secret-0000"},
        "previous": {"id": "vectors-web-1", "secret": "vectors-only-portal-web-1-not-a-secret-0000"},
    },
    "portal-app": {
        "current": {"id": "vectors-app-1", "secret": "vectors-only-portal-app-1-not-a-secret-0000"}
    },
}
RING = Keyring.from_json(json.dumps(KEYRING))
OUTSIDER = SigningKey("vectors-web-2", "portal-web", b"a-secret-the-workers-do-not-have-0000000")
UNKNOWN = SigningKey("vectors-web-0", "portal-web", b"vectors-only-retired-key-not-a-secret-0000")


def _request(request_id: str, producer: str, change: str) -> str:
    """A modify.requested body as a portal would serialise it: any JSON layout is fine, the bytes are
    what is signed."""
    return (
        '{"message_id":"6f1c2a7e-3d7b-4f0e-9a51-0c2d9b7e4a10","type":"modify.requested","schema_version":1,'
        f'"tenant_id":"acme","correlation_id":"{request_id}","causation_id":null,'
        f'"occurred_at":"2027-01-15T08:00:00Z","producer":"{producer}",'
        f'"payload":{{"appointment_id":"apt-1","requester_id":"cust-1","change":{change},'
        '"expected_version":null,"reply_to":null}}'
    )


CANCEL = _request("req-1", "portal-web", '{"action":"cancel","reason":"moving"}')
ZOE = _request("req-2", "portal-app", '{"action":"cancel","reason":"Zoë est malade — désolée"}')
PRETTY = CANCEL.replace(",", ", ") + "\n"


def string_to_sign(key_id: str, signed_at: int, body: str) -> str:
    return f"{SCHEME}\n{key_id}\n{signed_at}\n{body}"


def _accepted(name: str, why: str, producer: str, key: SigningKey, body: str, now: int, signed_at: int):
    return {
        "name": name,
        "why": why,
        "producer": producer,
        "key_id": key.key_id,
        "secret": key.secret.decode(),
        "signed_at": signed_at,
        "now": now,
        "body": body,
        "string_to_sign": string_to_sign(key.key_id, signed_at, body),
        "expected_headers": signature_headers(body.encode(), key, signed_at=signed_at),
    }


def _refused(name: str, why: str, body: str, headers: dict[str, Any], now: int, reason: DeadLetterReason):
    return {"name": name, "why": why, "body": body, "headers": headers, "now": now, "reason": str(reason)}


def build() -> dict[str, Any]:
    web, web_old, app = (
        RING.current_for("portal-web"),
        RING.by_id["vectors-web-1"],
        RING.current_for("portal-app"),
    )
    good = signature_headers(CANCEL.encode(), web, signed_at=T0)
    return {
        "description": (
            "Test vectors for portal message signatures (docs/security.md, contracts/signing.py). "
            "A signer must produce expected_headers from key_id, secret, signed_at and body (UTF-8 bytes); "
            "a verifier with `keyring` must accept every `accepted` case at `now` and refuse every `refused` "
            "case with `reason`. The secrets are published: never use them outside tests."
        ),
        "scheme": SCHEME,
        "algorithm": "HMAC-SHA256 over '<scheme>\\n<key_id>\\n<signed_at>\\n' + body bytes; header = "
        "'<scheme>=' + lowercase hex",
        "headers": {"key_id": KEY_ID_HEADER, "signed_at": SIGNED_AT_HEADER, "signature": SIGNATURE_HEADER},
        "signed_at_type": "AMQP integer (whole Unix seconds), never a string",
        "limits": {"max_age_s": LIMITS.max_age_s, "future_skew_s": LIMITS.future_skew_s},
        "keyring": KEYRING,
        "accepted": [
            _accepted(
                "current_key",
                "signed with portal-web's current key, checked at once",
                "portal-web",
                web,
                CANCEL,
                T0,
                T0,
            ),
            _accepted(
                "previous_key_at_max_age",
                "the previous key is still accepted during a rotation; "
                "a message exactly max_age_s old is still accepted",
                "portal-web",
                web_old,
                CANCEL,
                T0 + LIMITS.max_age_s,
                T0,
            ),
            _accepted(
                "non_ascii_body_at_max_skew",
                "the body is signed as UTF-8 bytes; a signing time "
                "exactly future_skew_s ahead of the verifier's clock is accepted",
                "portal-app",
                app,
                ZOE,
                T0 - LIMITS.future_skew_s,
                T0,
            ),
            _accepted(
                "layout_is_part_of_the_body",
                "spaces and a trailing newline are signed like any other byte (no JSON canonicalisation)",
                "portal-web",
                web,
                PRETTY,
                T0,
                T0,
            ),
        ],
        "refused": [
            _refused(
                "altered_body",
                "one character of the body changed after signing",
                CANCEL.replace("moving", "Moving"),
                good,
                T0,
                DeadLetterReason.SIGNATURE_INVALID,
            ),
            _refused(
                "wrong_secret",
                "signed under a known key id with a secret that is not that key's",
                CANCEL,
                signature_headers(CANCEL.encode(), OUTSIDER, signed_at=T0),
                T0,
                DeadLetterReason.SIGNATURE_INVALID,
            ),
            _refused(
                "moved_signing_time",
                "the signing time changed after signing (it is inside the MAC)",
                CANCEL,
                {**good, SIGNED_AT_HEADER: T0 + 1},
                T0 + 1,
                DeadLetterReason.SIGNATURE_INVALID,
            ),
            _refused(
                "signing_time_as_text",
                "x-appt-signed-at must be an AMQP integer, not a string",
                CANCEL,
                {**good, SIGNED_AT_HEADER: str(T0)},
                T0,
                DeadLetterReason.SIGNATURE_INVALID,
            ),
            _refused(
                "expired",
                "signed one second more than max_age_s before the verifier's clock",
                CANCEL,
                good,
                T0 + LIMITS.max_age_s + 1,
                DeadLetterReason.SIGNATURE_EXPIRED,
            ),
            _refused(
                "future",
                "signed one second more than future_skew_s after the verifier's clock",
                CANCEL,
                good,
                T0 - LIMITS.future_skew_s - 1,
                DeadLetterReason.SIGNATURE_EXPIRED,
            ),
            _refused(
                "unknown_key_id",
                "a key id the keyring does not hold (never issued, or retired)",
                CANCEL,
                signature_headers(CANCEL.encode(), UNKNOWN, signed_at=T0),
                T0,
                DeadLetterReason.SIGNATURE_UNKNOWN_KEY,
            ),
            _refused(
                "unsigned", "no signature headers at all", CANCEL, {}, T0, DeadLetterReason.SIGNATURE_MISSING
            ),
            _refused(
                "signature_header_missing",
                "key id and time but no signature",
                CANCEL,
                {KEY_ID_HEADER: web.key_id, SIGNED_AT_HEADER: T0},
                T0,
                DeadLetterReason.SIGNATURE_MISSING,
            ),
        ],
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    VECTORS_FILE.write_text(render(), encoding="utf-8")
    print(f"wrote {VECTORS_FILE}")
