"""HMAC signatures on messages from portals: pure, no I/O.

A portal signs the exact bytes it publishes with its current key and puts three AMQP headers on the
message:

    x-appt-key-id     the key's id (each id belongs to exactly one producer)
    x-appt-signed-at  when it signed, whole seconds since the Unix epoch (an integer)
    x-appt-signature  "v1=" + lowercase hex of
                      HMAC-SHA256(secret, "v1\\n" + key_id + "\\n" + signed_at + "\\n" + body bytes)

The gate checks the signature before it parses anything, and refuses (dead-letters, with the reason in
the headers) a message that is unsigned, signed with a key it does not know, altered after signing,
signed too long ago or in the future. Each producer has a current key and, while a rotation is under
way, a previous one; both are accepted. A copy of a message that was already handled carries the same
message id and is dropped by the inbox with no effect (`replay`); a copy older than the maximum age is
refused as expired, so the inbox never has to remember further back than that.

A producer's entry may name the businesses (tenants) its keys may act for (`"tenants": [...]`): a
message for any other tenant is refused (`signature_tenant_not_allowed`). Without `tenants` the key is
unbound: one portal serving every business.
"""

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from contracts.reasons import DeadLetterReason

PORTAL_ROLE = "requests"  # the exchange role portals publish to: every message type with it is signed
KEY_ID_HEADER = "x-appt-key-id"
SIGNED_AT_HEADER = "x-appt-signed-at"
SIGNATURE_HEADER = "x-appt-signature"
SIGNATURE_HEADERS = (KEY_ID_HEADER, SIGNED_AT_HEADER, SIGNATURE_HEADER)
SCHEME = "v1"
MIN_SECRET_BYTES = 32
_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_PRODUCER = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}[a-z0-9]$")
_HEX_SIGNATURE = re.compile(r"^v1=[0-9a-f]{64}$")


class KeyringError(ValueError):
    """A keyring that cannot be used; the text says what to fix (never the secret)."""


@dataclass(frozen=True)
class SigningKey:
    key_id: str
    producer: str
    secret: bytes = b""
    tenants: frozenset[str] | None = None  # the businesses it may act for; None: any (an unbound key)

    def __repr__(self) -> str:  # a key may end up in a log line or a traceback: never its secret
        return f"SigningKey(key_id={self.key_id!r}, producer={self.producer!r})"

    def may_act_for(self, tenant_id: str) -> bool:
        return self.tenants is None or tenant_id in self.tenants


@dataclass(frozen=True)
class Keyring:
    """Every producer's current key and, during a rotation, its previous one."""

    current: Mapping[str, SigningKey]  # producer -> key
    by_id: Mapping[str, SigningKey]

    @classmethod
    def from_json(cls, text: str) -> "Keyring":
        """`{"<producer>": {"current": {"id": "...", "secret": "..."}, "previous": {...},
        "tenants": ["..."]}, ...}`; `previous` and `tenants` are optional. Secrets are UTF-8 text of at
        least 32 bytes."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KeyringError(f"portal keys are not valid JSON: {exc.msg} at line {exc.lineno}") from None
        if not isinstance(raw, dict) or not raw:
            raise KeyringError("portal keys must be a JSON object of producers")
        current: dict[str, SigningKey] = {}
        by_id: dict[str, SigningKey] = {}
        for producer, entry in raw.items():
            if not isinstance(producer, str) or not _PRODUCER.match(producer):
                raise KeyringError(f"producer {str(producer)[:70]!r} is not a valid producer name")
            if (
                not isinstance(entry, dict)
                or "current" not in entry
                or set(entry) - {"current", "previous", "tenants"}
            ):
                raise KeyringError(
                    f"producer {producer!r}: give 'current' and optionally 'previous' keys and 'tenants'"
                )
            tenants = _tenants(producer, entry["tenants"]) if "tenants" in entry else None
            for slot in ("current", "previous"):
                if slot not in entry:
                    continue
                key = _key(producer, slot, entry[slot], tenants)
                if key.key_id in by_id:
                    raise KeyringError(f"key id {key.key_id!r} is used twice; each key needs its own id")
                by_id[key.key_id] = key
                if slot == "current":
                    current[producer] = key
        return cls(current=current, by_id=by_id)

    def current_for(self, producer: str) -> SigningKey:
        try:
            return self.current[producer]
        except KeyError:
            raise KeyringError(f"no signing key for producer {producer!r}") from None

    @property
    def secrets(self) -> tuple[bytes, ...]:
        return tuple(key.secret for key in self.by_id.values())


def _tenants(producer: str, raw: Any) -> frozenset[str]:
    if not isinstance(raw, list) or not raw or not all(isinstance(t, str) and 0 < len(t) <= 64 for t in raw):
        raise KeyringError(
            f"producer {producer!r}: 'tenants' must be a non-empty list of tenant ids (leave it out for a "
            "key that may act for every business)"
        )
    return frozenset(raw)


def _key(producer: str, slot: str, raw: Any, tenants: frozenset[str] | None = None) -> SigningKey:
    if not isinstance(raw, dict) or set(raw) != {"id", "secret"}:
        raise KeyringError(f"producer {producer!r} {slot} key: give exactly 'id' and 'secret'")
    key_id, secret = raw["id"], raw["secret"]
    if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
        raise KeyringError(f"producer {producer!r} {slot} key: id must be 1-64 letters, digits, '_.:-'")
    if not isinstance(secret, str) or len(secret.encode()) < MIN_SECRET_BYTES:
        raise KeyringError(
            f"producer {producer!r} {slot} key {key_id!r}: secret must be at least {MIN_SECRET_BYTES} bytes"
        )
    return SigningKey(key_id=key_id, producer=producer, secret=secret.encode(), tenants=tenants)


def _mac(secret: bytes, key_id: str, signed_at: int, body: bytes) -> str:
    signed = b"%s\n%s\n%d\n" % (SCHEME.encode(), key_id.encode(), signed_at) + body
    return f"{SCHEME}=" + hmac.new(secret, signed, hashlib.sha256).hexdigest()


def signature_headers(body: bytes, key: SigningKey, *, signed_at: int) -> dict[str, str | int]:
    """The headers a portal puts on `body`, signed with `key` at `signed_at` (Unix seconds)."""
    return {
        KEY_ID_HEADER: key.key_id,
        SIGNED_AT_HEADER: signed_at,
        SIGNATURE_HEADER: _mac(key.secret, key.key_id, signed_at, body),
    }


@dataclass(frozen=True)
class Verified:
    key: SigningKey
    signed_at: int


@dataclass(frozen=True)
class SignatureRefused:
    """Why a message's signature was not accepted; `detail` names no secret and no signature."""

    reason: DeadLetterReason
    detail: str


@dataclass(frozen=True)
class SignatureLimits:
    max_age_s: int = 86_400
    future_skew_s: int = 300


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        try:
            return value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value if isinstance(value, str) else None


def verify(
    body: bytes,
    headers: Mapping[str, Any] | None,
    keyring: Keyring,
    *,
    now: float,
    limits: SignatureLimits = SignatureLimits(),
) -> Verified | SignatureRefused:
    """Check `body` against its signature headers, before anything parses the body. Never raises."""
    headers = headers or {}
    if not any(name in headers for name in SIGNATURE_HEADERS):
        return SignatureRefused(
            DeadLetterReason.SIGNATURE_MISSING, "the message carries no signature headers"
        )
    key_id, signature, signed_at = (
        _text(headers.get(KEY_ID_HEADER)),
        _text(headers.get(SIGNATURE_HEADER)),
        headers.get(SIGNED_AT_HEADER),
    )
    missing = [
        name
        for name, value in (
            (KEY_ID_HEADER, key_id),
            (SIGNED_AT_HEADER, signed_at),
            (SIGNATURE_HEADER, signature),
        )
        if value is None
    ]
    if missing:
        return SignatureRefused(
            DeadLetterReason.SIGNATURE_MISSING, f"missing or not text: {', '.join(missing)}"
        )
    if type(signed_at) is not int:
        return SignatureRefused(
            DeadLetterReason.SIGNATURE_INVALID, f"{SIGNED_AT_HEADER} must be an integer of Unix seconds"
        )
    key = keyring.by_id.get(key_id)
    if key is None:
        return SignatureRefused(
            DeadLetterReason.SIGNATURE_UNKNOWN_KEY, f"key id {key_id[:64]!r} is not known"
        )
    if not _HEX_SIGNATURE.match(signature) or not hmac.compare_digest(
        signature, _mac(key.secret, key.key_id, signed_at, body)
    ):
        return SignatureRefused(
            DeadLetterReason.SIGNATURE_INVALID,
            f"the signature does not match the body and headers for key {key.key_id!r}",
        )
    age = now - signed_at
    if age > limits.max_age_s:
        return SignatureRefused(
            DeadLetterReason.SIGNATURE_EXPIRED,
            f"signed {int(age)} s ago; messages older than {limits.max_age_s} s are refused",
        )
    if -age > limits.future_skew_s:
        return SignatureRefused(
            DeadLetterReason.SIGNATURE_EXPIRED,
            f"signed {int(-age)} s in the future; clocks may differ by at most {limits.future_skew_s} s",
        )
    return Verified(key=key, signed_at=signed_at)
