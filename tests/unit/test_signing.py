"""Portal message signatures: who signed, over exactly which bytes, when, and every way to be refused."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.reasons import DeadLetterReason
from contracts.signing import (
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    SIGNED_AT_HEADER,
    Keyring,
    KeyringError,
    SignatureLimits,
    SignatureRefused,
    Verified,
    signature_headers,
    verify,
)

NOW = 1_800_000_000
SECRET_A1 = "a1" * 20
SECRET_A2 = "a2" * 20
SECRET_B = "bb" * 20
KEYS = {
    "portal-web": {
        "current": {"id": "web-2", "secret": SECRET_A2},
        "previous": {"id": "web-1", "secret": SECRET_A1},
    },
    "portal-app": {"current": {"id": "app-1", "secret": SECRET_B}},
}
RING = Keyring.from_json(json.dumps(KEYS))
BODY = b'{"type":"modify.requested","payload":{"appointment_id":"a-1"}}'


def signed(body: bytes = BODY, producer: str = "portal-web", at: int = NOW, ring: Keyring = RING) -> dict:
    return signature_headers(body, ring.current_for(producer), signed_at=at)


def refusal(result) -> DeadLetterReason:
    assert isinstance(result, SignatureRefused), result
    return result.reason


def test_a_message_signed_with_the_current_key_is_accepted_and_names_its_producer() -> None:
    result = verify(BODY, signed(), RING, now=NOW)
    assert isinstance(result, Verified)
    assert (result.key.producer, result.key.key_id, result.signed_at) == ("portal-web", "web-2", NOW)


def test_the_previous_key_is_still_accepted_during_a_rotation() -> None:
    old = Keyring.from_json(json.dumps({"portal-web": {"current": {"id": "web-1", "secret": SECRET_A1}}}))
    result = verify(BODY, signed(ring=old), RING, now=NOW)
    assert isinstance(result, Verified) and result.key.key_id == "web-1"


def test_once_the_previous_key_is_dropped_its_messages_are_refused_as_unknown_key() -> None:
    old = Keyring.from_json(json.dumps({"portal-web": {"current": {"id": "web-1", "secret": SECRET_A1}}}))
    rotated = Keyring.from_json(json.dumps({"portal-web": {"current": KEYS["portal-web"]["current"]}}))
    assert refusal(verify(BODY, signed(ring=old), rotated, now=NOW)) == DeadLetterReason.SIGNATURE_UNKNOWN_KEY


def test_an_unsigned_message_is_refused_as_missing() -> None:
    assert refusal(verify(BODY, {}, RING, now=NOW)) == DeadLetterReason.SIGNATURE_MISSING
    assert refusal(verify(BODY, None, RING, now=NOW)) == DeadLetterReason.SIGNATURE_MISSING


@pytest.mark.parametrize("dropped", [KEY_ID_HEADER, SIGNED_AT_HEADER, SIGNATURE_HEADER])
def test_a_message_missing_one_signature_header_is_refused_naming_it(dropped: str) -> None:
    headers = {k: v for k, v in signed().items() if k != dropped}
    result = verify(BODY, headers, RING, now=NOW)
    assert refusal(result) == DeadLetterReason.SIGNATURE_MISSING
    assert dropped in result.detail


@given(st.integers(min_value=0, max_value=len(BODY) * 8 - 1))
def test_any_single_bit_flipped_in_the_body_is_refused_as_invalid(bit: int) -> None:
    altered = bytearray(BODY)
    altered[bit // 8] ^= 1 << (bit % 8)
    assert refusal(verify(bytes(altered), signed(), RING, now=NOW)) == DeadLetterReason.SIGNATURE_INVALID


def test_a_byte_appended_to_the_body_is_refused_as_invalid() -> None:
    assert refusal(verify(BODY + b" ", signed(), RING, now=NOW)) == DeadLetterReason.SIGNATURE_INVALID


def test_a_moved_signing_time_is_refused_as_invalid() -> None:
    headers = {**signed(), SIGNED_AT_HEADER: NOW + 1}
    assert refusal(verify(BODY, headers, RING, now=NOW)) == DeadLetterReason.SIGNATURE_INVALID


def test_a_signature_under_another_known_key_id_is_refused_as_invalid() -> None:
    headers = {**signed(producer="portal-app"), KEY_ID_HEADER: "web-2"}
    assert refusal(verify(BODY, headers, RING, now=NOW)) == DeadLetterReason.SIGNATURE_INVALID


@pytest.mark.parametrize(
    "bad",
    ["", "v1=", "v1=" + "0" * 63, "v2=" + "0" * 64, "V1=" + "0" * 64, "v1=" + "G" * 64, 12345, b"\xff\xfe"],
)
def test_malformed_signatures_are_refused_without_raising(bad) -> None:
    result = verify(BODY, {**signed(), SIGNATURE_HEADER: bad}, RING, now=NOW)
    assert refusal(result) in {DeadLetterReason.SIGNATURE_INVALID, DeadLetterReason.SIGNATURE_MISSING}


@pytest.mark.parametrize("bad", ["1800000000", 1.8e9, True, None])
def test_a_signing_time_that_is_not_an_integer_is_refused(bad) -> None:
    result = verify(BODY, {**signed(), SIGNED_AT_HEADER: bad}, RING, now=NOW)
    assert refusal(result) in {DeadLetterReason.SIGNATURE_INVALID, DeadLetterReason.SIGNATURE_MISSING}


def test_header_values_as_bytes_are_read_as_text() -> None:
    headers = {k: (v.encode() if isinstance(v, str) else v) for k, v in signed().items()}
    assert isinstance(verify(BODY, headers, RING, now=NOW), Verified)


def test_age_limits_are_inclusive_and_refuse_beyond() -> None:
    limits = SignatureLimits(max_age_s=600, future_skew_s=60)
    assert isinstance(verify(BODY, signed(at=NOW - 600), RING, now=NOW, limits=limits), Verified)
    assert isinstance(verify(BODY, signed(at=NOW + 60), RING, now=NOW, limits=limits), Verified)
    old = verify(BODY, signed(at=NOW - 601), RING, now=NOW, limits=limits)
    assert refusal(old) == DeadLetterReason.SIGNATURE_EXPIRED and "601 s ago" in old.detail
    future = verify(BODY, signed(at=NOW + 61), RING, now=NOW, limits=limits)
    assert refusal(future) == DeadLetterReason.SIGNATURE_EXPIRED and "in the future" in future.detail


def test_a_refusal_never_repeats_a_secret_or_the_signature() -> None:
    headers = signed()
    for result in (
        verify(BODY + b"x", headers, RING, now=NOW),
        verify(BODY, {**headers, KEY_ID_HEADER: "nope"}, RING, now=NOW),
        verify(BODY, headers, RING, now=NOW + 10**7),
    ):
        assert SECRET_A2 not in result.detail and headers[SIGNATURE_HEADER][3:] not in result.detail


def test_a_key_never_shows_its_secret_in_repr() -> None:
    assert SECRET_A2 not in repr(RING) and SECRET_A2 not in repr(RING.current_for("portal-web"))


@pytest.mark.parametrize(
    ("keys", "says"),
    [
        ("{", "not valid JSON"),
        ("[]", "JSON object of producers"),
        ("{}", "JSON object of producers"),
        ('{"Portal Web": {"current": {"id": "k", "secret": "' + "s" * 32 + '"}}}', "not a valid producer"),
        ('{"portal-web": {"previous": {"id": "k", "secret": "' + "s" * 32 + '"}}}', "'current'"),
        ('{"portal-web": {"current": {"id": "k", "secret": "short"}}}', "at least 32 bytes"),
        ('{"portal-web": {"current": {"id": "k k", "secret": "' + "s" * 32 + '"}}}', "id must be"),
        ('{"portal-web": {"current": {"id": "k", "secret": "' + "s" * 32 + '", "x": 1}}}', "exactly 'id'"),
        (
            '{"a-1": {"current": {"id": "k", "secret": "' + "s" * 32 + '"}},'
            ' "b-1": {"current": {"id": "k", "secret": "' + "t" * 32 + '"}}}',
            "used twice",
        ),
    ],
)
def test_a_bad_keyring_is_refused_with_what_to_fix_and_no_secret(keys: str, says: str) -> None:
    with pytest.raises(KeyringError, match=says) as caught:
        Keyring.from_json(keys)
    assert "s" * 32 not in str(caught.value)


def test_a_producer_without_a_key_cannot_sign() -> None:
    with pytest.raises(KeyringError, match="no signing key for producer 'portal-kiosk'"):
        RING.current_for("portal-kiosk")
