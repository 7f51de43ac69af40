"""API keys of portal servers and office boards: stored as SHA-256 hashes, bound to tenants; pure, no I/O.

The keys file (`APPT_API_KEYS_FILE`, or `APPT_API_KEYS` inline) is JSON:

    {"keys": [{"id": "acme-portal-2", "kind": "portal", "sha256": "<hex>", "tenants": ["acme"],
               "producer": "portal-web"}, ...]}

`kind` is `portal` (acts for one customer per call) or `office` (a business's board). `producer` is the
portal name whose signing key (contracts/signing.py) signs the requests this key sends; office keys need
none. Rotation: add the new key's entry, move the callers over, remove the old one; both work meanwhile.
The plain key never appears in the file, a log line or an error.
"""

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any, Literal

KeyKind = Literal["portal", "office"]
_KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_TENANT = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
_PRODUCER = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,62}[a-z0-9]$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ApiKeysError(ValueError):
    """A keys file that cannot be used; the text says what to fix."""


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    kind: KeyKind
    tenants: frozenset[str]
    producer: str | None
    sha256: str

    def __repr__(self) -> str:
        return f"ApiKey(key_id={self.key_id!r}, kind={self.kind!r})"

    def serves(self, tenant_id: str) -> bool:
        return tenant_id in self.tenants


def hash_key(plain: str) -> str:
    return hashlib.sha256(plain.encode()).hexdigest()


@dataclass(frozen=True)
class ApiKeyring:
    by_hash: dict[str, ApiKey]

    @classmethod
    def from_json(cls, text: str) -> "ApiKeyring":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ApiKeysError(f"API keys are not valid JSON: {exc.msg} at line {exc.lineno}") from None
        if not isinstance(raw, dict) or set(raw) != {"keys"} or not isinstance(raw["keys"], list):
            raise ApiKeysError('API keys must be a JSON object {"keys": [...]}')
        by_hash: dict[str, ApiKey] = {}
        ids: set[str] = set()
        for index, entry in enumerate(raw["keys"]):
            key = _entry(index, entry)
            if key.key_id in ids:
                raise ApiKeysError(f"key id {key.key_id!r} is used twice; each key needs its own id")
            if key.sha256 in by_hash:
                raise ApiKeysError(f"key {key.key_id!r} has the same hash as another key")
            ids.add(key.key_id)
            by_hash[key.sha256] = key
        if not by_hash:
            raise ApiKeysError("API keys list no key")
        return cls(by_hash=by_hash)

    def find(self, plain: str) -> ApiKey | None:
        """The key whose hash matches; the dict lookup is by hash, and the match is confirmed in
        constant time."""
        digest = hash_key(plain)
        key = self.by_hash.get(digest)
        if key is None or not hmac.compare_digest(key.sha256, digest):
            return None
        return key


def _entry(index: int, entry: Any) -> ApiKey:
    where = f"keys[{index}]"
    if not isinstance(entry, dict):
        raise ApiKeysError(f"{where} must be an object")
    allowed = {"id", "kind", "sha256", "tenants", "producer"}
    if set(entry) - allowed or not {"id", "kind", "sha256", "tenants"} <= set(entry):
        raise ApiKeysError(f"{where}: give id, kind, sha256, tenants and (for portal keys) producer")
    key_id, kind, digest, tenants = entry["id"], entry["kind"], entry["sha256"], entry["tenants"]
    if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
        raise ApiKeysError(f"{where}: id must be 1-64 letters, digits, '_.:-'")
    if kind not in ("portal", "office"):
        raise ApiKeysError(f"{where} ({key_id}): kind must be 'portal' or 'office'")
    if not isinstance(digest, str) or not _SHA256.match(digest):
        raise ApiKeysError(f"{where} ({key_id}): sha256 must be 64 lowercase hex digits")
    if (
        not isinstance(tenants, list)
        or not tenants
        or not all(isinstance(t, str) and _TENANT.match(t) for t in tenants)
    ):
        raise ApiKeysError(f"{where} ({key_id}): tenants must be a non-empty list of tenant ids")
    producer = entry.get("producer")
    if kind == "portal" and (not isinstance(producer, str) or not _PRODUCER.match(producer)):
        raise ApiKeysError(f"{where} ({key_id}): a portal key needs the producer whose signing key it uses")
    if kind == "office" and producer is not None:
        raise ApiKeysError(f"{where} ({key_id}): an office key has no producer")
    return ApiKey(key_id=key_id, kind=kind, tenants=frozenset(tenants), producer=producer, sha256=digest)
