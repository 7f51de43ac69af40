"""The fault suite's office checks (tests/faults/office.py), pure: each way an office message can end
wrong is reported, and a clean run is not."""

from collections import Counter
from uuid import uuid4

from tests import factories as f
from tests.faults.load import build_plan
from tests.faults.office import EXPECT, Answer, OfficeFacts, OfficeWriter, Written, problems

APPLIED, STALE, OLDER = (
    Answer("applied", None),
    Answer("refused", "stale_record"),
    Answer("ignored", "older_revision"),
)


def _run():
    plan = build_plan(12, seed=1, label="checks", tenants=1)
    writer = OfficeWriter(None, None, plan, seed=1)  # type: ignore[arg-type]
    booking = plan.office_written[0]
    record = f.appointment_recorded(
        tenant=booking.tenant_id, appointment_id=booking.appointment_id, office_revision=1, based_on_version=1
    )
    writer.written.append(Written(record, "older_revision", EXPECT["older_revision"]))
    messages = [*plan.setup, record]
    facts = OfficeFacts()
    for message in messages:
        answer = OLDER if message is record else APPLIED
        facts.outcomes[message.message_id] = [answer]
        facts.shown[message.message_id] = answer
        if message.type == "office.appointment.recorded" and answer == APPLIED:
            facts.updates[message.message_id] = 1
    return facts, messages, writer, record


def test_a_clean_run_has_no_office_problem() -> None:
    facts, messages, writer, _ = _run()
    assert problems(facts, messages, writer) == []


def test_two_outcomes_for_one_office_message_are_reported() -> None:
    facts, messages, writer, record = _run()
    facts.outcomes[record.message_id].append(OLDER)
    assert any("2 office outcomes" in p for p in problems(facts, messages, writer))


def test_an_office_message_without_an_outcome_is_reported() -> None:
    facts, messages, writer, _ = _run()
    del facts.outcomes[messages[0].message_id]
    assert any("0 office outcomes" in p for p in problems(facts, messages, writer))


def test_a_read_store_saying_otherwise_is_reported() -> None:
    facts, messages, writer, record = _run()
    facts.shown[record.message_id] = APPLIED
    assert any("read store shows" in p for p in problems(facts, messages, writer))


def test_an_older_revision_that_applied_is_reported_twice_over() -> None:
    facts, messages, writer, record = _run()
    facts.outcomes[record.message_id] = [APPLIED]
    facts.shown[record.message_id] = APPLIED
    found = problems(facts, messages, writer)
    assert any("older_revision record" in p for p in found)  # not what its kind allows
    assert any("0 appointment.updated" in p for p in found)  # and applied without changing anything


def test_a_refused_record_that_changed_the_appointment_is_reported() -> None:
    facts, messages, writer, record = _run()
    facts.outcomes[record.message_id] = [STALE]
    facts.shown[record.message_id] = STALE
    facts.updates = Counter({**facts.updates, record.message_id: 1})
    assert any("1 appointment.updated" in p for p in problems(facts, messages, writer))


def test_an_outcome_nobody_asked_for_is_reported() -> None:
    facts, messages, writer, _ = _run()
    facts.outcomes[uuid4()] = [APPLIED]
    assert any("which nobody sent" in p for p in problems(facts, messages, writer))


def test_a_record_overtaken_by_a_later_applied_revision_may_be_ignored_and_no_other() -> None:
    facts, messages, writer, _ = _run()
    booking = writer._plan.office_written[0]
    current, later = (
        f.appointment_recorded(
            tenant=booking.tenant_id,
            appointment_id=booking.appointment_id,
            office_revision=r,
            based_on_version=1,
        )
        for r in (2, 3)
    )
    writer.written += [
        Written(current, "current", EXPECT["current"]),
        Written(later, "current", EXPECT["current"]),
    ]
    messages += [current, later]
    facts.outcomes[current.message_id], facts.shown[current.message_id] = [OLDER], OLDER
    facts.outcomes[later.message_id], facts.shown[later.message_id] = [STALE], STALE
    # revision 3 was refused, so nothing at or past revision 2 was applied: ignoring 2 was wrong
    assert any("current record" in p for p in problems(facts, messages, writer))
    facts.outcomes[later.message_id], facts.shown[later.message_id] = [APPLIED], APPLIED
    facts.updates[later.message_id] = 1
    assert problems(facts, messages, writer) == []
