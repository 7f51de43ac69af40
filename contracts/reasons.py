"""Stable reason codes: why a request was rejected or failed, and why a message was dead-lettered.

Codes are part of the wire contract: portals branch on them, so they are never renamed or reused.
Each outcome code carries a sentence a customer can read; portals may show it as is.
"""

from enum import StrEnum


class RejectionCode(StrEnum):
    """The policy gate refused the request; nothing changed."""

    APPOINTMENT_NOT_FOUND = "appointment_not_found"
    SELF_SERVICE_DISABLED = "self_service_disabled"
    APPOINTMENT_NOT_MODIFIABLE = "appointment_not_modifiable"
    CONFIRMED_CHANGE_BLOCKED = "confirmed_change_blocked"
    UNCONFIRMED_CHANGE_BLOCKED = "unconfirmed_change_blocked"
    NEW_WINDOW_IN_PAST = "new_window_in_past"
    SAME_WINDOW = "same_window"
    PROJECT_LOCKED = "project_locked"
    NOTICE_WINDOW_PASSED = "notice_window_passed"
    NEW_WINDOW_TOO_SOON = "new_window_too_soon"
    NEW_WINDOW_TOO_FAR = "new_window_too_far"
    OUTSIDE_PROJECT_DATES = "outside_project_dates"
    RESCHEDULE_LIMIT_REACHED = "reschedule_limit_reached"
    CANCEL_REASON_REQUIRED = "cancel_reason_required"
    CANCEL_REASON_NOT_ALLOWED = "cancel_reason_not_allowed"
    OFFICE_DECLINED = "office_declined"
    APPOINTMENT_VERSION_STALE = "appointment_version_stale"
    RATE_LIMITED = "rate_limited"  # too many requests from this customer or business; refused unread


class PendingCode(StrEnum):
    """The request is neither allowed nor refused yet."""

    AWAITING_OFFICE_APPROVAL = "awaiting_office_approval"


class FailureCode(StrEnum):
    """The request was approved but could not be applied; nothing changed."""

    APPOINTMENT_CHANGED = "appointment_changed"
    NEW_WINDOW_IN_PAST = "new_window_in_past"
    TIME_NO_LONGER_AVAILABLE = "time_no_longer_available"


class OfficeOutcomeCode(StrEnum):
    """Why an office message was ignored or refused (`office.outcome`); applied ones carry none."""

    OLDER_REVISION = "older_revision"  # ignored: a newer revision (or settings/capacity version) was applied
    STALE_RECORD = "stale_record"  # refused: built before a customer's change that it would undo
    UNKNOWN_VERSION = "unknown_version"  # refused: built on a version of ours that never existed
    APPROVAL_NOT_PENDING = "approval_not_pending"  # refused: the request is not waiting for the office
    APPROVAL_AMBIGUOUS = "approval_ambiguous"  # refused: requests of two portals wait under that id


OFFICE_TEXT: dict[str, str] = {
    OfficeOutcomeCode.OLDER_REVISION: (
        "A newer change of the same thing was already applied; this one changed nothing."
    ),
    OfficeOutcomeCode.STALE_RECORD: (
        "The customer changed the appointment after the state this record was built on, and the record "
        "would undo that change; nothing was changed. Rebuild the record on the current state "
        "(`current`) and send it again."
    ),
    OfficeOutcomeCode.UNKNOWN_VERSION: (
        "The record says it was built on an appointment version that does not exist yet; nothing was "
        "changed. Send it again built on the current state (`current`)."
    ),
    OfficeOutcomeCode.APPROVAL_NOT_PENDING: (
        "The request is not waiting for the office's approval (unknown, or already settled); nothing "
        "was changed."
    ),
    OfficeOutcomeCode.APPROVAL_AMBIGUOUS: (
        "Requests of more than one portal wait for approval under this request id; nothing was changed. "
        "Send the decision again naming the portal (`request_producer`)."
    ),
}


class DeadLetterReason(StrEnum):
    """Why a message could not be processed at all; set in the `x-dead-letter-reason` header."""

    MESSAGE_TOO_LARGE = "message_too_large"
    WRONG_CONTENT_TYPE = "wrong_content_type"
    MALFORMED_JSON = "malformed_json"
    UNKNOWN_MESSAGE_TYPE = "unknown_message_type"
    UNSUPPORTED_SCHEMA_VERSION = "unsupported_schema_version"
    SCHEMA_VIOLATION = "schema_violation"
    PROPERTIES_MISMATCH = "properties_mismatch"
    UNEXPECTED_MESSAGE_TYPE = "unexpected_message_type"
    HANDLER_ERROR = "handler_error"
    # A portal request reusing a known request id (same tenant and producer) for a different change.
    REQUEST_ID_REUSED = "request_id_reused"
    DELIVERY_LIMIT_EXCEEDED = "delivery_limit_exceeded"
    RETRIES_EXHAUSTED = "retries_exhausted"  # still failing transiently after every delayed retry
    # Portal messages must be signed (contracts/signing.py); checked before the body is parsed.
    SIGNATURE_MISSING = "signature_missing"
    SIGNATURE_INVALID = "signature_invalid"  # altered after signing, or a malformed signature
    SIGNATURE_UNKNOWN_KEY = "signature_unknown_key"
    SIGNATURE_EXPIRED = "signature_expired"  # signed longer ago than the maximum age, or in the future
    SIGNATURE_PRODUCER_MISMATCH = "signature_producer_mismatch"  # signed with another producer's key
    SIGNATURE_TENANT_NOT_ALLOWED = "signature_tenant_not_allowed"  # the key is bound to other businesses
    # The exchange and routing key it came by, and its type and schema version, are not one route of the
    # worker's subscriptions (contracts/routes.py): checked before any handler or state is touched.
    ROUTE_TYPE_MISMATCH = "route_type_mismatch"
    # A portal's `reply_to` names a queue outside its own prefix (`<namespace>.portal.<producer>.`).
    REPLY_TO_NOT_ALLOWED = "reply_to_not_allowed"


CUSTOMER_TEXT: dict[str, str] = {
    RejectionCode.APPOINTMENT_NOT_FOUND: "We couldn't find this appointment on your account.",
    RejectionCode.SELF_SERVICE_DISABLED: (
        "Online changes aren't available for this business. Please call the office to make a change."
    ),
    RejectionCode.APPOINTMENT_NOT_MODIFIABLE: (
        "This appointment can no longer be changed online because it is already {status}. "
        "Please call the office."
    ),
    RejectionCode.CONFIRMED_CHANGE_BLOCKED: (
        "This appointment is confirmed, so it can't be {action_past} online. Please call the office."
    ),
    RejectionCode.UNCONFIRMED_CHANGE_BLOCKED: (
        "This appointment can't be {action_past} online until it is confirmed. Please call the office."
    ),
    RejectionCode.NEW_WINDOW_IN_PAST: "The time you picked has already passed. Please pick a later time.",
    RejectionCode.SAME_WINDOW: "Your appointment is already at that time.",
    RejectionCode.PROJECT_LOCKED: (
        "Changes to this project's appointments are handled by the office right now. Please contact your "
        "project manager."
    ),
    RejectionCode.NOTICE_WINDOW_PASSED: (
        "Online changes must be made at least {hours} before the appointment. Please call the office."
    ),
    RejectionCode.NEW_WINDOW_TOO_SOON: "Please pick a time at least {hours} from now.",
    RejectionCode.NEW_WINDOW_TOO_FAR: "Please pick a time within the next {days}.",
    RejectionCode.OUTSIDE_PROJECT_DATES: "Please pick a time within your project's schedule.",
    RejectionCode.RESCHEDULE_LIMIT_REACHED: (
        "This appointment has already been rescheduled online {limit}. Please call the office to "
        "change it again."
    ),
    RejectionCode.CANCEL_REASON_REQUIRED: "Please tell us why you are canceling.",
    RejectionCode.CANCEL_REASON_NOT_ALLOWED: "Please choose one of these reasons: {reasons}.",
    RejectionCode.OFFICE_DECLINED: (
        "The office couldn't approve this change: {office_reason} Please call the office."
    ),
    RejectionCode.APPOINTMENT_VERSION_STALE: (
        "Your appointment was updated since you opened it, so nothing was changed. Please review it and "
        "try again."
    ),
    RejectionCode.RATE_LIMITED: (
        "We received too many requests in a short time, so nothing was changed. Please wait a minute and "
        "try again."
    ),
    FailureCode.TIME_NO_LONGER_AVAILABLE: (
        "That time is no longer available, so nothing was changed. Please pick another time."
    ),
    PendingCode.AWAITING_OFFICE_APPROVAL: (
        "Your request was sent to the office for approval. We'll let you know as soon as they decide."
    ),
    FailureCode.APPOINTMENT_CHANGED: (
        "Your appointment was updated by the office while we processed your request, so nothing was "
        "changed. Please review it and try again."
    ),
}

_ACTION_PAST = {"reschedule": "rescheduled", "cancel": "canceled"}
# How an appointment status reads in a sentence to a customer.
STATUS_PHRASE = {
    "scheduled": "scheduled",
    "dispatched": "dispatched (your technician is on the way)",
    "working": "in progress",
    "done": "completed",
    "canceled": "canceled",
}


# Neutral words for a blank the caller could not fill (documentation, examples); the gate always fills them.
_NEUTRAL_FACTS = {
    "hours": "the required number of hours",
    "days": "bookable days",
    "limit": "the allowed number of times",
    "reasons": "the reasons the office lists",
    "office_reason": "no reason was given.",
}


# Counted blanks and the unit they count: a number becomes "1 hour", "24 hours", "once", "3 times".
_UNITS = {"hours": ("hour", "hours"), "days": ("day", "days"), "limit": ("time", "times")}


def quantity(count: int, singular: str, plural: str) -> str:
    if singular == "time" and count in (1, 2):
        return ("once", "twice")[count - 1]
    return f"{count} {singular if count == 1 else plural}"


def _spell(name: str, value: object) -> object:
    if name in _UNITS and isinstance(value, int) and not isinstance(value, bool):
        return quantity(value, *_UNITS[name])
    return value


def customer_text(code: str, *, action: str | None = None, status: str | None = None, **facts: object) -> str:
    """The customer-facing sentence for an outcome code, with its blanks filled; counts are spelled with
    their unit in the right number ("1 hour", "48 hours", "once")."""
    template = CUSTOMER_TEXT[code]
    if code == RejectionCode.NOTICE_WINDOW_PASSED and facts.get("hours") == 0:
        template = "Online changes can only be made before the appointment starts. Please call the office."
    return template.format_map(
        {
            **_NEUTRAL_FACTS,
            "action_past": _ACTION_PAST.get(action or "", "changed"),
            "status": STATUS_PHRASE.get(status or "", "closed"),
            **{name: _spell(name, value) for name, value in facts.items()},
        }
    )
