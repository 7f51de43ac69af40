"""Message fixtures: the committed library stays valid against the contracts, validation names the file and
the reason, and replay-time rewrites (tenants, ids, times) keep a fixture set consistent."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID

import pytest

from apptctl import fixture_library
from apptctl.fixtures import (
    FROM_A_MESSAGE,
    Checked,
    FixturePathError,
    Rewrite,
    RewriteError,
    Source,
    consumers_of,
    fixture_files,
    fixture_of,
    load,
    parse_tenant_map,
    prepare,
    shift_times,
    topic_matches,
    validate,
)
from contracts.decoding import decode
from contracts.portal_v1 import ModifyRequested
from contracts.reasons import DeadLetterReason, RejectionCode
from tests import factories

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REGENERATE = "run `apptctl fixtures generate library --out tests/fixtures` and commit the result"


@pytest.fixture(scope="module")
def library() -> list[Checked]:
    return load([FIXTURES])


# --- the committed library --------------------------------------------------------------------------


def test_every_committed_fixture_is_what_it_says_it_is(library):
    problems = [f"{c.source}: {c.problem}" for c in library if not c.ok]
    assert problems == [], f"invalid fixtures ({REGENERATE} if the contracts changed):\n" + "\n".join(
        problems
    )
    for item in library:
        assert item.fixture is not None
        declared = item.fixture.expected_dead_letter
        if declared is None:
            assert item.message is not None and item.failure is None
        elif declared is DeadLetterReason.ROUTE_TYPE_MISMATCH:
            assert item.message is not None and item.routing != (
                type(item.message).exchange_role,
                type(item.message).routing_key,
            )
        elif declared is DeadLetterReason.SIGNATURE_MISSING:
            assert item.message is not None and not item.fixture.signed
        else:
            assert item.failure is not None and item.failure.reason == declared, item.source


def test_the_committed_library_is_what_the_generator_writes():
    stale = []
    for relative, text in fixture_library.library().items():
        path = FIXTURES / relative
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            stale.append(relative)
    assert stale == [], f"tests/fixtures is stale ({REGENERATE}): {stale}"


def test_every_rejection_code_has_a_fixture_set_that_expects_it(library):
    expected = {
        c.fixture.expect.reason_code
        for c in library
        if c.fixture and c.fixture.expect and "rejections" in c.source.path.parts
    }
    assert expected == {code.value for code in RejectionCode}


def test_every_dead_letter_reason_a_message_can_cause_has_a_malformed_fixture(library):
    declared = {c.fixture.expected_dead_letter for c in library if c.fixture and c.malformed}
    assert declared == FROM_A_MESSAGE


def test_every_story_request_declares_its_outcome(library):
    requests = [
        c for c in library if "stories" in c.source.path.parts and isinstance(c.message, ModifyRequested)
    ]
    assert len(requests) >= 9
    assert all(c.fixture and c.fixture.expect and c.fixture.expect.request_status for c in requests)
    assert {p.name for p in (FIXTURES / "stories").iterdir()} >= {
        "01-residential-plumbing",
        "02-commercial-hvac",
        "03-residential-construction",
        "04-commercial-construction-electrical",
    }


def test_folders_replay_in_path_order_and_files_in_list_order(library):
    files = fixture_files([FIXTURES / "stories"])
    assert files == sorted(files)
    assert [f.name for f in files[:3]] == ["010-settings.json", "020-bookings.json", "030-requests.json"]
    phases = [c.phase for c in library]
    assert phases == sorted(phases)


# --- validation names the file and the specific reason ----------------------------------------------


def _write(tmp_path: Path, name: str, content) -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def _request_fixture(**changes) -> dict:
    fixture = fixture_of(factories.modify_requested())
    fixture.update(changes)
    return fixture


def test_an_unmarked_naive_datetime_is_invalid_with_the_field_and_reason(tmp_path):
    fixture = _request_fixture()
    fixture["message"]["occurred_at"] = "2026-01-05T09:00:00"
    path = _write(tmp_path, "naive.json", [fixture_of(factories.appointment_recorded()), fixture])
    first, second = load([path])
    assert first.ok
    assert not second.ok and str(second.source) == f"{path}#2"
    assert second.problem is not None
    assert second.problem.startswith("schema_violation:") and "occurred_at" in second.problem


def test_a_malformed_fixture_must_fail_with_the_reason_it_declares(tmp_path):
    fixture = _request_fixture(body="{not json", expect={"dead_letter": "schema_violation"})
    del fixture["message"]
    (item,) = load([_write(tmp_path, "bad.json", fixture)])
    assert not item.ok
    assert "expect.dead_letter=schema_violation" in (item.problem or "")
    assert "malformed_json" in (item.problem or "")

    fixture["expect"] = {"dead_letter": "malformed_json"}
    (item,) = load([_write(tmp_path, "bad.json", fixture)])
    assert item.ok and item.malformed and item.label == "malformed:malformed_json"


def test_a_valid_message_marked_malformed_is_invalid(tmp_path):
    (item,) = load([_write(tmp_path, "x.json", _request_fixture(expect={"dead_letter": "schema_violation"}))])
    assert "but it is a valid modify.requested" in (item.problem or "")


def test_a_valid_message_on_the_wrong_exchange_is_invalid_unless_marked(tmp_path):
    fixture = _request_fixture(exchange="office", routing_key="office.approval.decided")
    (item,) = load([_write(tmp_path, "x.json", fixture)])
    assert "is published to requests/modify.requested, not office/office.approval.decided" in (
        item.problem or ""
    )
    fixture["expect"] = {"dead_letter": "route_type_mismatch"}
    (item,) = load([_write(tmp_path, "x.json", fixture)])
    assert item.ok and item.malformed


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{", "fixture file is not valid JSON"),
        ("[]", "empty list"),
        ('{"type": "modify.requested"}', 'not a fixture: expected an object with "fixture_format": 1'),
        ('{"fixture_format": 1}', "give exactly one of message, body, body_base64, body_gzip_base64"),
        (
            '{"fixture_format": 1, "body": "x", "exchange": "requests"}',
            "give exchange and routing_key together",
        ),
        (
            '{"fixture_format": 1, "body": "x", "exchange": "nowhere", "routing_key": "k"}',
            "fixture format: exchange",
        ),
        (
            '{"fixture_format": 1, "body": "x", "exchange": "requests", "routing_key": "k",'
            ' "expect": {"dead_letter": "handler_error"}}',
            "depends on a worker",
        ),
        (
            '{"fixture_format": 1, "body": "{}", "expect": {"dead_letter": "malformed_json"}}',
            "malformed_json",
        ),
        (
            '{"fixture_format": 1, "body": "[]", "expect": {"dead_letter": "malformed_json"}}',
            "needs exchange",
        ),
    ],
)
def test_format_problems_are_specific(tmp_path, content, problem):
    (item,) = load([_write(tmp_path, "f.json", content)])
    assert not item.ok and problem in (item.problem or ""), item.problem


def test_missing_paths_and_empty_folders_are_refused(tmp_path):
    with pytest.raises(FixturePathError, match="no such file"):
        load([tmp_path / "nope"])
    with pytest.raises(FixturePathError, match=r"no \*\.json"):
        load([tmp_path])


# --- rewrites ------------------------------------------------------------------------------------------


def _checked(*messages) -> list[Checked]:
    anchor = datetime(2026, 1, 5, 9, tzinfo=UTC)
    raw = [fixture_of(m, anchor=anchor) for m in messages]
    return [validate(Source(Path("mem.json"), i), 0, item) for i, item in enumerate(raw, start=1)]


def test_times_shift_by_now_minus_anchor_so_relations_hold():
    anchor = datetime(2026, 1, 5, 9, tzinfo=UTC)
    booking = factories.appointment_recorded(
        window=factories.arrival_window(start=anchor + timedelta(days=3))
    )
    same = factories.modify_requested(change=factories.reschedule(booking.payload.window), occurred_at=anchor)
    now = anchor + timedelta(days=300, hours=5, seconds=7.5)
    (out_booking, out_request), broken = prepare(_checked(booking, same), Rewrite(now=now))
    assert broken == []
    moved = out_booking.message.payload.window
    assert moved.start == anchor + timedelta(days=3) + timedelta(days=300, hours=5, seconds=7)
    assert out_request.message.payload.change.new_window == moved  # still "the same window"
    assert out_request.message.occurred_at == anchor + timedelta(days=300, hours=5, seconds=7)
    kept, _ = prepare(_checked(booking), Rewrite(now=now, shift_times=False))
    assert kept[0].message.payload.window == booking.payload.window


def test_shift_times_touches_only_aware_iso_times():
    delta = timedelta(hours=1)
    value = {
        "a": "2026-01-05T09:00:00Z",
        "b": ["2026-01-05T09:00:00+02:00"],
        "c": "2026-01-05T09:00:00",
        "d": "x",
    }
    assert shift_times(value, delta) == {
        "a": "2026-01-05T10:00:00Z",
        "b": ["2026-01-05T10:00:00+02:00"],
        "c": "2026-01-05T09:00:00",
        "d": "x",
    }


def test_kept_ids_by_default_and_derived_ids_for_a_renamed_tenant():
    request = factories.modify_requested(tenant="acme")
    (kept,), _ = prepare(_checked(request), Rewrite())
    assert kept.message.message_id == request.message_id
    assert kept.amqp.message_id == str(request.message_id)

    rewrite = Rewrite(tenant_suffix="-x1")
    (first,), _ = prepare(_checked(request), rewrite)
    (again,), _ = prepare(_checked(request), rewrite)
    assert first.message.tenant_id == "acme-x1"
    assert first.amqp.headers["x-tenant-id"] == "acme-x1"
    assert first.message.message_id != request.message_id
    assert again.message.message_id == first.message.message_id  # a second replay dedupes

    (mapped,), _ = prepare(_checked(request), Rewrite(tenant_map=parse_tenant_map(["acme=zenith"])))
    assert mapped.message.tenant_id == "zenith"


def test_fresh_ids_are_new_each_time_and_keep_causation_inside_the_set():
    request = factories.modify_requested()
    rejected = factories.modify_rejected(request)
    (out_request, out_rejected), _ = prepare(_checked(request, rejected), Rewrite(fresh_ids=True))
    assert out_request.message.message_id != request.message_id
    assert out_rejected.message.causation_id == out_request.message.message_id
    (again, _), _ = prepare(_checked(request, rejected), Rewrite(fresh_ids=True))
    assert again.message.message_id != out_request.message.message_id


def test_bad_tenant_rewrites_are_refused():
    with pytest.raises(RewriteError):
        Rewrite(tenant_suffix="_UPPER")
    with pytest.raises(RewriteError):
        parse_tenant_map(["no-equals"])
    _, broken = prepare(_checked(factories.modify_requested()), Rewrite(tenant_suffix="-" + "x" * 70))
    assert broken and "not a valid tenant id" in (broken[0].problem or "")


def test_malformed_fixtures_keep_their_bytes_and_properties(library):
    malformed = [c for c in library if c.malformed]
    outgoing, broken = prepare(malformed, Rewrite(tenant_suffix="-zz"))
    assert broken == []
    for item in outgoing:
        assert item.amqp.body == item.checked.body
        assert item.amqp.message_id == item.checked.fixture.props.message_id
        assert item.amqp.content_type == item.checked.fixture.props.content_type
        assert item.message is None


# --- routing and generation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("#", "appointment.rescheduled", True),
        ("modify.requested", "modify.requested", True),
        ("modify.*", "modify.requested", True),
        ("modify.*", "modify.requested.x", False),
        ("office.#", "office", True),
        ("a.#.z", "a.b.c.z", True),
        ("modify.requested", "modify.approved", False),
    ],
)
def test_topic_matching(pattern, key, matches):
    assert topic_matches(pattern, key) is matches


def test_consumers_follow_the_topology_bindings():
    assert set(consumers_of("requests", "modify.requested")) == {"policy_gate", "portal_sync"}
    assert consumers_of("office", "office.appointment.recorded") == ["modify_handler"]
    assert "portal_sync" in consumers_of("events", "job.status_changed")


def test_a_generated_load_set_is_valid_deterministic_and_expects_every_outcome():
    anchor = datetime(2026, 3, 2, 8, tzinfo=UTC)
    files = fixture_library.load(250, "Seed 7", anchor)
    assert files == fixture_library.load(250, "Seed 7", anchor)
    assert set(files) == {"load/010-settings.json", "load/020-bookings.json", "load/030-requests.json"}
    settings, bookings, requests = (json.loads(files[name]) for name in sorted(files))
    assert (len(settings), len(bookings), len(requests)) == (3, 250, 250)
    assert {s["message"]["tenant_id"] for s in settings} == {f"load-seed-7-{n:03d}" for n in range(3)}
    for item in [*settings, *bookings, *requests]:
        assert not isinstance(decode(json.dumps(item["message"]).encode()), type(None))
        assert UUID(item["message"]["message_id"])
    outcomes = {(r["expect"]["request_status"], r["expect"].get("reason_code")) for r in requests}
    assert outcomes == {
        ("completed", None),
        ("rejected", "same_window"),
        ("rejected", "appointment_not_found"),
        ("rejected", "new_window_in_past"),
    }
    assert all(line.startswith("{") for line in files["load/020-bookings.json"].splitlines()[1:-1])
