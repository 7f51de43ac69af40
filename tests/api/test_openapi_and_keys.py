"""The committed OpenAPI document is current, and API keys are bound, hashed and checked; pure."""

import json

import pytest

from portal_api import openapi
from portal_api.keys import ApiKeyring, ApiKeysError, hash_key


def test_the_committed_openapi_document_is_current():
    committed = openapi.DOCUMENT.read_text(encoding="utf-8")
    assert committed == openapi.render(), "portal_api/openapi.json is stale: run `make openapi`"


def test_the_document_is_openapi_3_1_and_every_operation_documents_its_problems():
    document = json.loads(openapi.DOCUMENT.read_text(encoding="utf-8"))
    assert document["openapi"].startswith("3.1")
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if path == "/healthz":
                continue
            assert "401" in operation["responses"], (method, path)
            assert "application/problem+json" in operation["responses"]["404"]["content"], (method, path)


def keyring(*entries: dict) -> ApiKeyring:
    return ApiKeyring.from_json(json.dumps({"keys": list(entries)}))


def entry(plain: str, **fields) -> dict:
    base = {
        "id": "k1",
        "kind": "portal",
        "sha256": hash_key(plain),
        "tenants": ["acme"],
        "producer": "portal-web",
    }
    return {**base, **fields}


def test_a_key_is_found_by_its_hash_and_serves_only_its_tenants():
    ring = keyring(entry("s3cret-key-one-xxxxxxxxxxxxxxxx"))
    key = ring.find("s3cret-key-one-xxxxxxxxxxxxxxxx")
    assert key is not None and key.serves("acme") and not key.serves("other")
    assert ring.find("s3cret-key-one-xxxxxxxxxxxxxxxy") is None
    assert "s3cret" not in repr(key) and key.sha256 not in repr(key)


def test_rotation_keeps_both_keys_working():
    ring = keyring(
        entry("old-key-aaaaaaaaaaaaaaaaaaaa", id="old"), entry("new-key-bbbbbbbbbbbbbbbbbbbb", id="new")
    )
    assert ring.find("old-key-aaaaaaaaaaaaaaaaaaaa").key_id == "old"
    assert ring.find("new-key-bbbbbbbbbbbbbbbbbbbb").key_id == "new"


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"kind": "admin"}, "kind"),
        ({"sha256": "plain-text"}, "sha256"),
        ({"tenants": []}, "tenants"),
        ({"tenants": ["Not A Tenant"]}, "tenants"),
        ({"producer": None}, "producer"),
        ({"kind": "office"}, "no producer"),
        ({"extra": 1}, "give id"),
    ],
)
def test_a_bad_keys_file_says_what_to_fix(fields, says):
    with pytest.raises(ApiKeysError, match=says):
        keyring(entry("any-key-cccccccccccccccccccccccc", **fields))


def test_the_same_id_twice_is_refused():
    with pytest.raises(ApiKeysError, match="used twice"):
        keyring(entry("a-key-dddddddddddddddddddddddd"), entry("b-key-eeeeeeeeeeeeeeeeeeeeeeee"))


def test_the_development_keys_file_loads():
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "infra" / "dev" / "api-keys.json").read_text()
    ring = ApiKeyring.from_json(text)
    assert ring.find("dev-only-portal-key-all-demo-tenants-0001").kind == "portal"
    assert ring.find("dev-only-office-key-all-demo-tenants-0001").kind == "office"
