"""The wire contract's behaviour: models, decode()'s specific refusals, reason codes and customer texts."""

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from uuid import uuid4

import pytest
from pydantic import ValidationError

from contracts.common import AppointmentStatus, ArrivalWindow
from contracts.decoding import (
    CONTENT_TYPE,
    MAX_MESSAGE_BYTES,
    DecodeError,
    DecodeFailure,
    decode,
    decode_or_raise,
    encode,
)
from contracts.envelope import Envelope
from contracts.events_v1 import ModifyRejected
from contracts.office_v1 import AppointmentRecordedPayload
from contracts.portal_v1 import Cancel, ModifyRequested, Reschedule
from contracts.reasons import (
    CUSTOMER_TEXT,
    STATUS_PHRASE,
    DeadLetterReason,
    FailureCode,
    PendingCode,
    RejectionCode,
    customer_text,
)
from contracts.registry import KNOWN_TYPES, MESSAGE_CLASSES, MESSAGE_TYPES, message_class, type_name
from infra.topology import EXCHANGE_ROLES, FEED_ROLE, REPLY_ROLE
from tests import factories as f

SECRET = "Sup3rSecret-Token-7731"
Mutation = Callable[[dict], None]


# --- helpers --------------------------------------------------------------------------------------


def body_of(message: Envelope) -> dict:
    return json.loads(encode(message))


def to_bytes(data: object) -> bytes:
    return json.dumps(data).encode()


def mutated(message: Envelope, mutate: Mutation) -> bytes:
    data = body_of(message)
    mutate(data)
    return to_bytes(data)


def refused(body: bytes, **kwargs) -> DecodeFailure:
    result = decode(body, **kwargs)
    assert isinstance(result, DecodeFailure), f"expected a refusal, got {result!r}"
    return result


def accepted(body: bytes, **kwargs) -> Envelope:
    result = decode(body, **kwargs)
    assert isinstance(result, Envelope), f"expected a message, got {result!r}"
    return result


def put(path: str, value: object) -> Mutation:
    """A mutation that sets a dotted path, e.g. put("payload.change.action", "x")."""

    def apply(data: dict) -> None:
        *parents, last = path.split(".")
        for part in parents:
            data = data[part]
        data[last] = value

    return apply


def drop(path: str) -> Mutation:
    def apply(data: dict) -> None:
        *parents, last = path.split(".")
        for part in parents:
            data = data[part]
        del data[last]

    return apply


def window_of(start: str, end: str) -> dict:
    return {"start": start, "end": end}


# --- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("message", f.one_of_each(), ids=lambda m: m.type)
def test_every_message_type_round_trips(message: Envelope) -> None:
    decoded = accepted(encode(message), content_type=CONTENT_TYPE, property_type=message.type)
    assert type(decoded) is type(message)
    assert decoded == message
    assert encode(decoded) == encode(message)


def test_one_of_each_covers_the_registry() -> None:
    assert [type(m) for m in f.one_of_each()] == list(MESSAGE_CLASSES)


@pytest.mark.parametrize(
    "change",
    [f.reschedule(), f.cancel(), f.cancel("Fixed it myself"), Cancel(reason="  padded  ")],
    ids=["reschedule", "cancel", "cancel-with-reason", "cancel-stripped"],
)
def test_both_kinds_of_change_round_trip(change: Reschedule | Cancel) -> None:
    message = f.modify_requested(change=change)
    decoded = accepted(encode(message))
    assert decoded == message
    assert decoded.payload.change.action == change.action


def test_reason_whitespace_is_stripped() -> None:
    assert Cancel(reason="  padded  ").reason == "padded"


def test_window_in_another_timezone_round_trips_to_the_same_instant() -> None:
    start = datetime(2030, 5, 1, 9, 0, tzinfo=timezone(timedelta(hours=-5)))
    message = f.modify_requested(change=f.reschedule(f.arrival_window(start=start)))
    decoded = accepted(encode(message))
    assert decoded.payload.change.new_window.start == start


def test_a_window_of_exactly_24_hours_is_accepted() -> None:
    day = window_of("2030-01-01T10:00:00Z", "2030-01-02T10:00:00Z")
    decoded = accepted(mutated(f.modify_requested(), put("payload.change.new_window", day)))
    assert decoded.payload.change.new_window.end - decoded.payload.change.new_window.start == timedelta(
        hours=24
    )


def test_encode_is_compact_utf8_json() -> None:
    body = encode(f.modify_requested())
    assert body.startswith(b'{"message_id":') and b"\n" not in body


def test_decode_or_raise() -> None:
    message = f.modify_requested()
    assert decode_or_raise(encode(message)) == message
    with pytest.raises(DecodeError) as raised:
        decode_or_raise(b"[]")
    assert raised.value.failure.reason is DeadLetterReason.MALFORMED_JSON


# --- registry -------------------------------------------------------------------------------------


def test_registry_lists_every_class_once_by_type_and_version() -> None:
    assert len(MESSAGE_TYPES) == len(MESSAGE_CLASSES)
    for cls in MESSAGE_CLASSES:
        assert message_class(type_name(cls), cls.model_fields["schema_version"].default) is cls
        assert cls.exchange_role in (*EXCHANGE_ROLES, FEED_ROLE, REPLY_ROLE)
        assert cls.routing_key and cls.summary
    assert KNOWN_TYPES == {type_name(cls) for cls in MESSAGE_CLASSES}
    assert message_class("modify.requested", 2) is None


# --- refusals before parsing: size and content type -----------------------------------------------


def test_too_large_is_refused_before_anything_else() -> None:
    failure = refused(b" " * (MAX_MESSAGE_BYTES + 1), content_type=None)
    assert failure.reason is DeadLetterReason.MESSAGE_TOO_LARGE
    assert str(MAX_MESSAGE_BYTES) in failure.detail


def test_size_limit_is_inclusive() -> None:
    body = encode(f.modify_requested())
    accepted(body, max_bytes=len(body))
    assert refused(body, max_bytes=len(body) - 1).reason is DeadLetterReason.MESSAGE_TOO_LARGE


@pytest.mark.parametrize(
    "content_type", [None, "", "text/plain", "application/xml", "application/jsonx", "json", "application"]
)
def test_wrong_content_type(content_type: str | None) -> None:
    failure = refused(encode(f.modify_requested()), content_type=content_type)
    assert failure.reason is DeadLetterReason.WRONG_CONTENT_TYPE


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "Application/JSON", " application/json"],
)
def test_accepted_content_types(content_type: str) -> None:
    accepted(encode(f.modify_requested()), content_type=content_type)


# --- refusals of the body's shape -----------------------------------------------------------------


@pytest.mark.parametrize(
    "body", [b"", b"{", b"not json", b'{"type": }', b"{'type': 'x'}", b"\xff\xfe\x00", b'{"a": "\xff"}']
)
def test_malformed_json(body: bytes) -> None:
    assert refused(body).reason is DeadLetterReason.MALFORMED_JSON


@pytest.mark.parametrize("body", [b"[]", b"null", b'"text"', b"42", b"true", b"NaN", b'[{"type": "x"}]'])
def test_top_level_must_be_an_object(body: bytes) -> None:
    failure = refused(body)
    assert failure.reason is DeadLetterReason.MALFORMED_JSON
    assert failure.detail == "top level must be a JSON object"


@pytest.mark.parametrize(
    "mutate",
    [
        drop("type"),
        put("type", None),
        put("type", 5),
        put("type", ["modify.requested"]),
        put("type", ""),
        put("type", "modify.unknown"),
        put("type", "MODIFY.REQUESTED"),
    ],
    ids=["missing", "null", "number", "list", "empty", "unknown", "wrong-case"],
)
def test_unknown_type(mutate: Mutation) -> None:
    failure = refused(mutated(f.modify_requested(), mutate))
    assert failure.reason is DeadLetterReason.UNKNOWN_MESSAGE_TYPE


@pytest.mark.parametrize(
    "mutate",
    [
        put("schema_version", 2),
        put("schema_version", 0),
        put("schema_version", -1),
        put("schema_version", "1"),
        put("schema_version", 1.0),
        put("schema_version", None),
        drop("schema_version"),
    ],
    ids=["2", "0", "negative", "string", "float", "null", "missing"],
)
def test_unsupported_schema_version(mutate: Mutation) -> None:
    failure = refused(mutated(f.modify_requested(), mutate))
    assert failure.reason is DeadLetterReason.UNSUPPORTED_SCHEMA_VERSION
    assert "modify.requested" in failure.detail


def test_boolean_schema_version_is_refused() -> None:
    failure = refused(mutated(f.modify_requested(), put("schema_version", True)))
    assert failure.reason is DeadLetterReason.UNSUPPORTED_SCHEMA_VERSION


@pytest.mark.parametrize("property_type", ["modify.approved", "", "Modify.Requested", "modify.requested "])
def test_amqp_type_property_must_match_the_body(property_type: str) -> None:
    failure = refused(encode(f.modify_requested()), property_type=property_type)
    assert failure.reason is DeadLetterReason.PROPERTIES_MISMATCH


def test_absent_amqp_type_property_is_not_checked() -> None:
    accepted(encode(f.modify_requested()), property_type=None)


# --- schema violations ----------------------------------------------------------------------------

PAST = "2020-01-01T10:00:00+00:00"

SCHEMA_VIOLATIONS: list[tuple[str, Callable[[], Envelope], Mutation, str]] = [
    # (case, message factory, mutation, location expected in the detail)
    ("extra-top-level", f.modify_requested, put("extra", 1), "extra"),
    ("extra-in-payload", f.modify_requested, put("payload.note", "hi"), "payload.note"),
    (
        "extra-in-change",
        f.modify_requested,
        put("payload.change.note", "hi"),
        "payload.change.reschedule.note",
    ),
    ("extra-in-window", f.modify_requested, put("payload.change.new_window.tz", "UTC"), "new_window.tz"),
    (
        "extra-in-settings-rules",
        f.portal_settings_updated,
        put("payload.rules.move", {}),
        "payload.rules.move",
    ),
    ("missing-payload", f.modify_requested, drop("payload"), "payload"),
    ("missing-message-id", f.modify_requested, drop("message_id"), "message_id"),
    ("missing-appointment-id", f.modify_requested, drop("payload.appointment_id"), "payload.appointment_id"),
    ("naive-occurred-at", f.modify_requested, put("occurred_at", "2030-01-01T10:00:00"), "occurred_at"),
    (
        "naive-window",
        f.modify_requested,
        put("payload.change.new_window", window_of("2030-01-01T10:00:00", "2030-01-01T12:00:00")),
        "new_window",
    ),
    ("date-only", f.modify_requested, put("occurred_at", "2030-01-01"), "occurred_at"),
    ("epoch-number-time", f.modify_requested, put("occurred_at", 1_900_000_000), "occurred_at"),
    ("tenant-uppercase", f.modify_requested, put("tenant_id", "Acme"), "tenant_id"),
    ("tenant-space", f.modify_requested, put("tenant_id", "ac me"), "tenant_id"),
    ("tenant-one-char", f.modify_requested, put("tenant_id", "a"), "tenant_id"),
    ("tenant-too-long", f.modify_requested, put("tenant_id", "a" * 64), "tenant_id"),
    ("tenant-leading-dash", f.modify_requested, put("tenant_id", "-acme"), "tenant_id"),
    (
        "entity-id-too-long",
        f.modify_requested,
        put("payload.appointment_id", "a" * 65),
        "payload.appointment_id",
    ),
    ("entity-id-slash", f.modify_requested, put("payload.appointment_id", "a/b"), "payload.appointment_id"),
    ("entity-id-empty", f.modify_requested, put("payload.requester_id", ""), "payload.requester_id"),
    ("entity-id-space", f.modify_requested, put("correlation_id", "req 1"), "correlation_id"),
    ("slug-too-long", f.modify_requested, put("producer", "p" * 65), "producer"),
    ("uuid-malformed", f.modify_requested, put("message_id", "not-a-uuid"), "message_id"),
    ("causation-malformed", f.modify_approved, put("causation_id", "123"), "causation_id"),
    (
        "cancel-reason-too-long",
        lambda: f.modify_requested(change=f.cancel()),
        put("payload.change.reason", "x" * 201),
        "reason",
    ),
    (
        "cancel-reason-blank",
        lambda: f.modify_requested(change=f.cancel()),
        put("payload.change.reason", "   "),
        "reason",
    ),
    ("rejection-text-too-long", f.modify_rejected, put("payload.reason", "x" * 1001), "payload.reason"),
    (
        "window-end-before-start",
        f.modify_requested,
        put("payload.change.new_window", window_of("2030-01-01T12:00:00Z", "2030-01-01T10:00:00Z")),
        "must end after it starts",
    ),
    (
        "window-empty",
        f.modify_requested,
        put("payload.change.new_window", window_of("2030-01-01T12:00:00Z", "2030-01-01T12:00:00Z")),
        "must end after it starts",
    ),
    (
        "window-over-24h",
        f.modify_requested,
        put("payload.change.new_window", window_of("2030-01-01T10:00:00Z", "2030-01-02T10:00:01Z")),
        "longer than 24 hours",
    ),
    (
        "window-over-24h-across-offsets",
        f.appointment_recorded,
        put("payload.window", window_of("2030-01-01T10:00:00+05:00", "2030-01-02T06:00:00+00:00")),
        "longer than 24 hours",
    ),
    (
        "appointment-id-number",
        f.modify_requested,
        put("payload.appointment_id", 12345),
        "payload.appointment_id",
    ),
    ("version-as-string", f.modify_requested, put("payload.expected_version", "3"), "expected_version"),
    ("version-as-float", f.portal_settings_updated, put("payload.settings_version", 1.0), "settings_version"),
    ("version-negative", f.job_status_changed, put("payload.version", -1), "payload.version"),
    ("version-too-big", f.job_status_changed, put("payload.version", 2**62 + 1), "payload.version"),
    ("bool-as-int", f.job_status_changed, put("payload.active_appointments", True), "active_appointments"),
    ("negative-count", f.job_status_changed, put("payload.active_appointments", -1), "active_appointments"),
    ("int-as-bool", f.portal_settings_updated, put("payload.feature_enabled", 1), "feature_enabled"),
    ("string-as-bool", f.portal_settings_updated, put("payload.feature_enabled", "true"), "feature_enabled"),
    ("payload-as-list", f.modify_requested, put("payload", []), "payload"),
    ("enum-wrong-case", f.appointment_recorded, put("payload.status", "SCHEDULED"), "payload.status"),
    ("enum-unknown", f.appointment_recorded, put("payload.confirmation", "maybe"), "payload.confirmation"),
    (
        "permission-unknown",
        f.portal_settings_updated,
        put("payload.rules.cancel.confirmed", "yes"),
        "rules.cancel",
    ),
    ("initiator-unknown", f.appointment_updated, put("payload.initiated_by", "robot"), "initiated_by"),
    ("action-unknown-in-result", f.modify_rejected, put("payload.action", "move"), "payload.action"),
    (
        "too-many-contacts",
        lambda: f.appointment_recorded(project=f.project(contacts={"lead-1": "project_lead"})),
        lambda d: d["payload"]["project"].update(contacts=d["payload"]["project"]["contacts"] * 51),
        "payload.project.contacts",
    ),
    # The change is a tagged union on `action`: the tag picks the variant, then that variant is strict.
    ("change-tag-missing", f.modify_requested, drop("payload.change.action"), "discriminator 'action'"),
    ("change-tag-unknown", f.modify_requested, put("payload.change.action", "move"), "payload.change"),
    ("change-tag-wrong-case", f.modify_requested, put("payload.change.action", "Cancel"), "payload.change"),
    ("change-tag-not-string", f.modify_requested, put("payload.change.action", 1), "payload.change"),
    ("change-not-object", f.modify_requested, put("payload.change", "cancel"), "payload.change"),
    ("reschedule-without-window", f.modify_requested, drop("payload.change.new_window"), "new_window"),
    (
        "reschedule-with-reason",
        f.modify_requested,
        put("payload.change.reason", "no"),
        "payload.change.reschedule.reason",
    ),
    (
        "cancel-with-window",
        lambda: f.modify_requested(change=f.cancel()),
        put("payload.change.new_window", window_of("2030-01-01T10:00:00Z", "2030-01-01T12:00:00Z")),
        "payload.change.cancel.new_window",
    ),
    (
        "approved-change-tag-unknown",
        f.modify_approved,
        put("payload.change.action", "move"),
        "payload.change",
    ),
]


@pytest.mark.parametrize(
    ("make", "mutate", "where"),
    [case[1:] for case in SCHEMA_VIOLATIONS],
    ids=[case[0] for case in SCHEMA_VIOLATIONS],
)
def test_schema_violation(make: Callable[[], Envelope], mutate: Mutation, where: str) -> None:
    failure = refused(mutated(make(), mutate))
    assert failure.reason is DeadLetterReason.SCHEMA_VIOLATION
    assert where in failure.detail


def test_a_past_window_is_valid_on_the_wire() -> None:
    """Whether a time has passed is a rule of the policy gate, not of the contract."""
    accepted(
        mutated(
            f.modify_requested(), put("payload.change.new_window", window_of(PAST, PAST[:11] + "12:00:00Z"))
        )
    )


def test_many_errors_make_a_bounded_detail() -> None:
    many = {f"field_{i:03}": i for i in range(200)}
    failure = refused(mutated(f.modify_requested(), lambda d: d["payload"].update(many)))
    assert failure.reason is DeadLetterReason.SCHEMA_VIOLATION
    assert len(failure.detail) <= 900


# --- the detail never carries what the message said -----------------------------------------------

LEAK_PROBES: list[tuple[str, Callable[[], Envelope], Mutation]] = [
    ("id-pattern", f.modify_requested, put("payload.appointment_id", f"{SECRET} x")),
    ("id-too-long", f.modify_requested, put("payload.requester_id", SECRET * 5)),
    ("tenant", f.modify_requested, put("tenant_id", SECRET)),
    (
        "text-too-long",
        lambda: f.modify_requested(change=f.cancel()),
        put("payload.change.reason", SECRET * 20),
    ),
    ("extra-field-value", f.modify_requested, put("payload.note", SECRET)),
    ("datetime", f.modify_requested, put("occurred_at", SECRET)),
    ("window-start", f.modify_requested, put("payload.change.new_window.start", SECRET)),
    ("enum", f.appointment_recorded, put("payload.status", SECRET)),
    ("bool", f.portal_settings_updated, put("payload.feature_enabled", SECRET)),
    ("int", f.modify_requested, put("payload.expected_version", SECRET)),
    ("object", f.modify_requested, put("payload", SECRET)),
    ("reason-code", f.modify_rejected, put("payload.reason_code", SECRET + "!")),
    ("uuid", f.modify_requested, put("message_id", SECRET)),
]


@pytest.mark.parametrize(("make", "mutate"), [p[1:] for p in LEAK_PROBES], ids=[p[0] for p in LEAK_PROBES])
def test_detail_does_not_echo_field_values(make: Callable[[], Envelope], mutate: Mutation) -> None:
    failure = refused(mutated(make(), mutate))
    assert failure.reason is DeadLetterReason.SCHEMA_VIOLATION
    assert SECRET not in failure.detail
    assert SECRET[:8] not in failure.detail


def test_detail_does_not_echo_an_unknown_change_tag() -> None:
    failure = refused(mutated(f.modify_requested(), put("payload.change.action", SECRET)))
    assert SECRET not in failure.detail


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-32"])
def test_non_utf8_json_is_malformed(encoding: str) -> None:
    body = encode(f.modify_requested()).decode().encode(encoding)
    assert refused(body).reason is DeadLetterReason.MALFORMED_JSON


def test_malformed_json_detail_does_not_echo_the_body() -> None:
    failure = refused(f'{{"type": "{SECRET}", '.encode())
    assert failure.reason is DeadLetterReason.MALFORMED_JSON
    assert SECRET not in failure.detail


# --- models built in Python -----------------------------------------------------------------------


def test_python_construction_takes_enum_values_but_still_validates() -> None:
    payload = f.appointment_recorded().payload.model_dump()
    assert AppointmentRecordedPayload(**{**payload, "status": "done"}).status is AppointmentStatus.DONE
    with pytest.raises(ValidationError):
        AppointmentRecordedPayload(**{**payload, "status": "finished"})


def test_models_are_frozen() -> None:
    message = f.modify_requested()
    with pytest.raises(ValidationError):
        message.tenant_id = "other"  # type: ignore[misc]


def test_python_construction_refuses_a_naive_window() -> None:
    naive = datetime(2030, 1, 1, 10, 0)
    with pytest.raises(ValidationError, match="timezone"):
        ArrivalWindow(start=naive, end=naive + timedelta(hours=1))


def test_follow_carries_tenant_and_correlation_and_names_its_cause() -> None:
    request = f.modify_requested(tenant="sunny-plumbing", request_id="req-42")
    approved = f.modify_approved(request)
    assert (approved.tenant_id, approved.correlation_id) == ("sunny-plumbing", "req-42")
    assert approved.causation_id == request.message_id
    assert approved.message_id != request.message_id
    assert request.causation_id is None


def test_message_ids_are_unique_per_message() -> None:
    assert len({f.modify_requested().message_id for _ in range(20)}) == 20


def test_type_and_version_are_fixed_per_class() -> None:
    with pytest.raises(ValidationError):
        ModifyRequested(**{**f.modify_requested().model_dump(), "type": "modify.approved"})
    with pytest.raises(ValidationError):
        ModifyRejected(**{**f.modify_rejected().model_dump(), "schema_version": 2})


def test_envelope_needs_an_aware_occurred_at() -> None:
    data = {**f.modify_requested().model_dump(), "message_id": uuid4(), "occurred_at": datetime(2030, 1, 1)}
    with pytest.raises(ValidationError, match="timezone"):
        ModifyRequested(**data)
    data["occurred_at"] = datetime(2030, 1, 1, tzinfo=UTC)
    assert ModifyRequested(**data).occurred_at.tzinfo is not None


# --- reason codes and customer texts --------------------------------------------------------------


def test_reason_codes_are_stable() -> None:
    """Portals branch on these strings: renaming or removing one breaks them."""
    assert [str(c) for c in RejectionCode] == [
        "appointment_not_found",
        "self_service_disabled",
        "appointment_not_modifiable",
        "confirmed_change_blocked",
        "unconfirmed_change_blocked",
        "new_window_in_past",
        "same_window",
        # codes are only ever appended
        "project_locked",
        "notice_window_passed",
        "new_window_too_soon",
        "new_window_too_far",
        "outside_project_dates",
        "reschedule_limit_reached",
        "cancel_reason_required",
        "cancel_reason_not_allowed",
        "office_declined",
        "appointment_version_stale",
        "rate_limited",
    ]
    assert [str(c) for c in PendingCode] == ["awaiting_office_approval"]
    assert [str(c) for c in FailureCode] == [
        "appointment_changed",
        "new_window_in_past",
        "time_no_longer_available",
    ]
    assert {str(c) for c in DeadLetterReason} >= {
        "message_too_large",
        "wrong_content_type",
        "malformed_json",
        "unknown_message_type",
        "unsupported_schema_version",
        "schema_violation",
        "properties_mismatch",
        "unexpected_message_type",
        "handler_error",
    }


OUTCOME_CODES = [*RejectionCode, *FailureCode, *PendingCode]


@pytest.mark.parametrize("code", OUTCOME_CODES, ids=lambda c: f"{type(c).__name__}.{c.name}")
@pytest.mark.parametrize("action", ["reschedule", "cancel", None])
@pytest.mark.parametrize("status", [*AppointmentStatus, None])
def test_every_outcome_code_has_a_text_with_every_blank_filled(
    code: str, action: str | None, status: str | None
) -> None:
    text = customer_text(code, action=action, status=status)
    assert text and "{" not in text and "}" not in text
    assert len(text) <= 1000  # it must fit ModifyRejected/ModifyFailed.reason


@pytest.mark.parametrize(
    ("code", "action", "expected"),
    [
        (RejectionCode.CONFIRMED_CHANGE_BLOCKED, "reschedule", "can't be rescheduled online"),
        (RejectionCode.CONFIRMED_CHANGE_BLOCKED, "cancel", "can't be canceled online"),
        (RejectionCode.CONFIRMED_CHANGE_BLOCKED, None, "can't be changed online"),
        (RejectionCode.UNCONFIRMED_CHANGE_BLOCKED, "cancel", "can't be canceled online until"),
        (RejectionCode.UNCONFIRMED_CHANGE_BLOCKED, "unknown", "can't be changed online until"),
    ],
)
def test_customer_text_fills_the_action(code: RejectionCode, action: str | None, expected: str) -> None:
    assert expected in customer_text(code, action=action)


@pytest.mark.parametrize("status", list(AppointmentStatus))
def test_customer_text_fills_the_status(status: AppointmentStatus) -> None:
    text = customer_text(RejectionCode.APPOINTMENT_NOT_MODIFIABLE, status=status)
    assert f"already {STATUS_PHRASE[status]}." in text


def test_customer_text_without_a_status_says_closed() -> None:
    assert "already closed." in customer_text(RejectionCode.APPOINTMENT_NOT_MODIFIABLE)


def test_customer_text_takes_enum_members_and_plain_strings_alike() -> None:
    assert customer_text(RejectionCode.SAME_WINDOW) == customer_text("same_window")
    assert customer_text(FailureCode.NEW_WINDOW_IN_PAST) == customer_text(RejectionCode.NEW_WINDOW_IN_PAST)


def test_every_customer_text_belongs_to_an_outcome_code() -> None:
    assert set(CUSTOMER_TEXT) == {str(code) for code in OUTCOME_CODES}


def test_unknown_code_has_no_text() -> None:
    with pytest.raises(KeyError):
        customer_text("no_such_code")


@pytest.mark.parametrize(
    ("code", "facts", "expected"),
    [
        (RejectionCode.NOTICE_WINDOW_PASSED, {"hours": 1}, "at least 1 hour before the appointment"),
        (RejectionCode.NOTICE_WINDOW_PASSED, {"hours": 48}, "at least 48 hours before the appointment"),
        (RejectionCode.NOTICE_WINDOW_PASSED, {"hours": 0}, "only be made before the appointment starts"),
        (RejectionCode.NEW_WINDOW_TOO_SOON, {"hours": 1}, "at least 1 hour from now."),
        (RejectionCode.NEW_WINDOW_TOO_FAR, {"days": 1}, "within the next 1 day."),
        (RejectionCode.NEW_WINDOW_TOO_FAR, {"days": 30}, "within the next 30 days."),
        (RejectionCode.RESCHEDULE_LIMIT_REACHED, {"limit": 1}, "rescheduled online once."),
        (RejectionCode.RESCHEDULE_LIMIT_REACHED, {"limit": 2}, "rescheduled online twice."),
        (RejectionCode.RESCHEDULE_LIMIT_REACHED, {"limit": 3}, "rescheduled online 3 times."),
        (RejectionCode.NOTICE_WINDOW_PASSED, {}, "at least the required number of hours before"),
        (RejectionCode.NEW_WINDOW_TOO_FAR, {}, "within the next bookable days."),
    ],
)
def test_customer_text_spells_counts_with_their_unit(code: RejectionCode, facts: dict, expected: str) -> None:
    assert expected in customer_text(code, **facts)


def test_a_carried_offer_must_be_for_the_state_the_change_leaves() -> None:
    """`modify.approved` and the change events may carry the portal's offer (issue 14): for the same
    appointment, at the version the change produces; anything else is refused at decode."""
    approval = f.modify_approved(decided_on_version=1, offer=f.carried_offer(2))
    assert decode_or_raise(encode(approval)) == approval
    for wrong in (f.carried_offer(1), f.carried_offer(3)):
        with pytest.raises(ValidationError, match="appointment_version must be 2"):
            f.modify_approved(decided_on_version=1, offer=wrong)
    body = json.loads(encode(f.appointment_rescheduled(version=2, offer=f.carried_offer(2))))
    body["payload"]["offer"]["appointment_id"] = "appt-other"
    with pytest.raises(DecodeError) as refused:
        decode_or_raise(json.dumps(body).encode())
    assert refused.value.failure.reason == DeadLetterReason.SCHEMA_VIOLATION
    # Without the field, a version 1 event is as valid as before.
    assert f.appointment_canceled(version=2).payload.offer is None


# --- request ids per portal (issue 19) -----------------------------------------------------------------


def test_messages_that_follow_a_request_name_its_portal_and_others_keep_their_bytes() -> None:
    """A request id means one request of one portal: every message that follows from a portal's request
    carries that portal (`request_producer`) on and on; a message with none has no such key at all."""
    request = f.modify_requested(producer="portal-app", request_id="req-1")
    assert b"request_producer" not in encode(request)
    assert request.request_portal() == "portal-app"
    payload = dict(request_id="req-1", appointment_id="apt-1", action="cancel", reason_code="x", reason="y")
    rejected = ModifyRejected.follow(request, producer="policy_gate", occurred_at=f.now(), payload=payload)
    assert rejected.request_producer == "portal-app" and rejected.correlation_id == "req-1"
    again = ModifyRejected.follow(rejected, producer="portal_sync", occurred_at=f.now(), payload=payload)
    assert again.request_producer == "portal-app"
    assert json.loads(encode(again))["request_producer"] == "portal-app"
    assert decode(encode(again)) == again
    # an answer to another request names that request's portal
    other = ModifyRejected.follow(
        rejected, producer="policy_gate", occurred_at=f.now(), payload=payload, request_producer="portal-web"
    )
    assert other.request_producer == "portal-web"
    booking = f.appointment_recorded()
    assert booking.request_portal() is None and b"request_producer" not in encode(booking)


def test_a_request_naming_another_portal_as_its_own_is_a_schema_violation() -> None:
    body = json.loads(encode(f.modify_requested(producer="portal-web")))
    body["request_producer"] = "portal-app"
    failure = decode(json.dumps(body).encode())
    assert isinstance(failure, DecodeFailure) and failure.reason == DeadLetterReason.SCHEMA_VIOLATION
    body["request_producer"] = "portal-web"
    assert not isinstance(decode(json.dumps(body).encode()), DecodeFailure)
