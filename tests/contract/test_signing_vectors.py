"""contracts/signing-vectors.json: current with contracts/signing.py; each case behaves as it says."""

import json

import pytest

from contracts.signing import (
    Keyring,
    SignatureLimits,
    SignatureRefused,
    SigningKey,
    Verified,
    signature_headers,
    verify,
)
from tests.contract.signing_vectors import VECTORS_FILE, render

VECTORS = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))
RING = Keyring.from_json(json.dumps(VECTORS["keyring"]))
LIMITS = SignatureLimits(**VECTORS["limits"])


def test_the_committed_vectors_are_current() -> None:
    assert VECTORS_FILE.read_text(encoding="utf-8") == render(), (
        "contracts/signing-vectors.json is stale: run `make signing-vectors`"
    )


@pytest.mark.parametrize("case", VECTORS["accepted"], ids=lambda case: case["name"])
def test_an_accepted_vector_signs_to_its_expected_headers_and_verifies(case: dict) -> None:
    key = SigningKey(case["key_id"], case["producer"], case["secret"].encode())
    body = case["body"].encode()
    assert signature_headers(body, key, signed_at=case["signed_at"]) == case["expected_headers"]
    result = verify(body, case["expected_headers"], RING, now=case["now"], limits=LIMITS)
    assert isinstance(result, Verified) and result.key.producer == case["producer"]


@pytest.mark.parametrize("case", VECTORS["refused"], ids=lambda case: case["name"])
def test_a_refused_vector_is_refused_with_its_reason(case: dict) -> None:
    result = verify(case["body"].encode(), case["headers"], RING, now=case["now"], limits=LIMITS)
    assert isinstance(result, SignatureRefused) and str(result.reason) == case["reason"], result


def test_the_vectors_cover_every_way_a_signature_check_refuses() -> None:
    reasons = {case["reason"] for case in VECTORS["refused"]}
    assert reasons == {"signature_invalid", "signature_expired", "signature_unknown_key", "signature_missing"}
