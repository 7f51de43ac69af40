"""Reconciliation's public entry points: does every request have one outcome, does the read store agree.

Every accepted request has exactly one outcome, every customer change has a request, and the read store
equals the source of truth.

`reconcile(facts, ...)` (classify.py) is pure: it classifies what the system recorded (portal.requests,
policy.decisions, the messaging outbox and inbox, the scheduling and portal tables, dead letters, and
optionally the list of requests a portal says it sent; facts.py) and returns a `Report` (report.py).
`gather(...)` and `read_dead_letters(...)` (gather.py) are the edge that queries PostgreSQL and RabbitMQ;
`check(...)` (cli.py) runs all three; render.py writes the report for the terminal.

Every request ends in one class:
  applied, rejected, failed, dead_lettered   terminal (with their reason)
  waiting                                     parked until the office decides (a legitimate resting state)
  in_flight                                   not finished, but younger than the grace period
  lost                                        not finished and older than the grace period (with the stage
                                              where it stopped)
  duplicated                                  more than one effect or decision event for one request
  unexpected                                  something happened that no accepted request explains

The outbox is the event history (purged after APPT_OUTBOX_RETENTION_S): checks that need history only run
on what it still holds, and the report says when a check was skipped for that reason.
"""

from apptctl.reconcile.classify import check_capacity, check_lost_updates, reconcile
from apptctl.reconcile.cli import BadSince, DatabaseUnavailable, check, parse_since, run
from apptctl.reconcile.facts import (
    AppointmentState,
    DeadLetterRef,
    DecisionRow,
    Event,
    Facts,
    JobState,
    Key,
    RequestRow,
    SentRequest,
    SlotUsage,
)
from apptctl.reconcile.gather import (
    dead_letter_ref,
    event_from_row,
    gather,
    load_manifest,
    read_dead_letters,
    write_manifest,
)
from apptctl.reconcile.render import render
from apptctl.reconcile.report import PROBLEMS, TERMINAL, Kind, Report, RequestClass, Verdict, Violation

__all__ = [
    "PROBLEMS",
    "TERMINAL",
    "AppointmentState",
    "BadSince",
    "DatabaseUnavailable",
    "DeadLetterRef",
    "DecisionRow",
    "Event",
    "Facts",
    "JobState",
    "Key",
    "Kind",
    "Report",
    "RequestClass",
    "RequestRow",
    "SentRequest",
    "SlotUsage",
    "Verdict",
    "Violation",
    "check",
    "check_capacity",
    "check_lost_updates",
    "dead_letter_ref",
    "event_from_row",
    "gather",
    "load_manifest",
    "parse_since",
    "read_dead_letters",
    "reconcile",
    "render",
    "run",
    "write_manifest",
]
