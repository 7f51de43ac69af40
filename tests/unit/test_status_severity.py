"""`apptctl status` as a monitoring check: each problem's severity, and the worst one as the exit code."""

from apptctl.status import (
    CRITICAL,
    OK,
    UNKNOWN,
    WARNING,
    DeadLetterCounts,
    OutboxStatus,
    QueueStatus,
    Status,
    problems_of,
)


def status(**changes) -> Status:
    queues = [
        QueueStatus("appt.policy_gate", "work", "policy_gate", exists=True, ready=0, consumers=1),
        QueueStatus("appt.policy_gate.dead", "dead-letter", "policy_gate", exists=True, ready=0),
        QueueStatus("appt.feed-unrouted", "sink", None, exists=True, ready=10, max_length=100),
    ]
    result = Status("appt", "/", queues, OutboxStatus(60.0, 0, None))
    for name, value in changes.items():
        setattr(result, name, value)
    result.problems = problems_of(result)
    return result


def test_all_well_is_ok() -> None:
    assert status().exit_code == OK and status().healthy


def test_an_unreachable_management_api_alone_is_unknown() -> None:
    result = status(management_error="ConnectionRefusedError")
    assert result.exit_code == UNKNOWN and [p.severity for p in result.problems] == [UNKNOWN]
    assert "management API is unreachable" in result.problems[0].text


def test_a_known_warning_outranks_unknown_and_critical_outranks_both() -> None:
    dead = {"appt.policy_gate.dead": DeadLetterCounts(2, {"malformed_json": 2})}
    assert status(management_error="refused", dead_letters=dead).exit_code == WARNING
    result = status(management_error="refused", dead_letters=dead)
    result.queues[0].consumers = 0
    result.problems = problems_of(result)
    assert result.exit_code == CRITICAL


def test_a_broker_that_cannot_be_reached_is_critical_and_not_also_a_management_problem() -> None:
    result = status(broker_error="ConnectionRefusedError", management_error="refused")
    assert [p.severity for p in result.problems] == [CRITICAL]


def test_an_old_outbox_row_is_a_warning_and_an_unreachable_database_critical() -> None:
    assert status(outbox=OutboxStatus(60.0, 3, 120.0)).exit_code == WARNING
    assert status(outbox=OutboxStatus(60.0, error="OSError: refused")).exit_code == CRITICAL


def test_the_feeds_unrouted_queue_at_its_cap_is_a_warning() -> None:
    result = status()
    result.queues[2].ready = 100
    result.problems = problems_of(result)
    assert result.exit_code == WARNING and "at its cap of 100" in result.problems[0].text
