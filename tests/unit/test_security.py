"""Per-worker broker permissions, derived from the contracts: every message type has one publisher, and
each identity's regular expressions admit exactly its own queue, exchanges and routing keys."""

import re

from contracts.registry import MESSAGE_CLASSES, type_name
from infra.security.postgres import scram_verifier
from infra.security.rabbitmq import IDENTITIES, NOTHING, key_pattern, permissions, publisher_of
from infra.topology import build


def test_every_registered_message_type_is_published_by_an_identity_we_create():
    declared = publisher_of()
    unknown = {type_name(c): declared.get(type_name(c)) for c in MESSAGE_CLASSES}
    unknown = {t: p for t, p in unknown.items() if p not in IDENTITIES}
    assert not unknown, f"publishers without a broker identity in infra/security/rabbitmq.py: {unknown}"


def test_routing_key_templates_become_one_word_per_placeholder():
    pattern = key_pattern("{tenant_id}.{customer_id}.{job_id}")
    assert re.fullmatch(pattern, "acme.cust-1.job-9")
    assert not re.fullmatch(pattern, "acme.cust-1") and not re.fullmatch(pattern, "a.b.c.d")
    assert re.fullmatch(key_pattern("modify.approved"), "modify.approved")
    assert not re.fullmatch(key_pattern("modify.approved"), "modifyXapproved")


def test_each_identity_may_read_only_its_queue_and_write_only_its_routes():
    topology = build("appt")
    allowed = permissions(topology)
    queues = [q.name for q in topology.queues]
    for worker in ("policy_gate", "modify_handler", "portal_sync"):
        p = allowed[worker]
        assert p.configure == NOTHING
        assert [q for q in queues if re.fullmatch(p.read, q)] == [f"appt.{worker}"]
        assert re.fullmatch(p.write, f"appt.dead-letters.{worker}") and re.fullmatch(
            p.write, f"appt.retry.{worker}"
        )
        others = [w for w in ("policy_gate", "modify_handler", "portal_sync") if w != worker]
        for shared_or_others in ["appt.dead-letters", "appt.retry"] + [
            f"appt.{role}.{other}" for other in others for role in ("dead-letters", "retry")
        ]:
            assert not re.fullmatch(p.write, shared_or_others), (worker, shared_or_others)
        assert not re.fullmatch(p.write, "appt.requests") and not re.fullmatch(p.write, "appt.office")
    gate, handler = allowed["policy_gate"].topics, allowed["modify_handler"].topics
    assert re.fullmatch(gate["appt.internal"], "modify.approved")
    assert not re.fullmatch(gate["appt.events"], "appointment.rescheduled")
    assert re.fullmatch(handler["appt.events"], "appointment.rescheduled")
    assert not re.fullmatch(handler["appt.events"], "modify.rejected")
    assert "appt.internal" not in handler
    assert set(allowed["portal_sync"].topics) <= {"appt.feed"}  # the live feed, if the contracts have it
    # replies to portals through their own direct exchange, never the default one (every queue by name)
    assert re.fullmatch(allowed["portal_sync"].write, "appt.replies")
    # (RabbitMQ checks the default exchange's permission under the name amq.default)
    assert not any(re.fullmatch(p.write, "amq.default") for p in allowed.values())
    assert allowed["office"].read == NOTHING
    # the auditor reads its copies of the dead letters, never the real dead-letter queues (reading a queue
    # includes ack and purge), and may neither declare, delete nor publish anything
    auditor = allowed["auditor"]
    assert sorted(q for q in queues if re.fullmatch(auditor.read, q)) == sorted(
        f"appt.{w}.dead.audit" for w in ("modify_handler", "policy_gate", "portal_sync")
    )
    assert auditor.configure == NOTHING and auditor.write == NOTHING and auditor.topics == {}
    # portals: their own reply and feed queues under `appt.portal.`, nothing else of ours
    portal = allowed["portal"]
    assert [q for q in queues if re.fullmatch(portal.read, q)] == []
    for own in ("appt.portal.portal-web.replies", "appt.portal.portal-app.feed-acme"):
        assert re.fullmatch(portal.configure, own) and re.fullmatch(portal.read, own)
        assert re.fullmatch(portal.write, own)  # to bind it
    for foreign in (
        "appt.portal_sync",
        "appt.portal",
        "appt.policy_gate.dead",
        "appt.requests",
        "appt.events",
    ):
        assert not re.fullmatch(portal.configure, foreign), foreign
    assert re.fullmatch(portal.read, "appt.replies") and re.fullmatch(portal.read, "appt.feed")
    assert not re.fullmatch(portal.write, "appt.replies") and not re.fullmatch(portal.read, "appt.requests")
    # nobody may publish to the return exchange: only the broker hands delay-queue messages back by it
    assert not any(re.fullmatch(p.write, "appt.retry-return") for p in allowed.values())
    assert re.fullmatch(allowed["portal"].topics["appt.requests"], "modify.requested")


def test_passwords_become_scram_verifiers():
    verifier = scram_verifier("s3cret", salt=b"0123456789abcdef")
    assert re.fullmatch(r"SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+", verifier)
    assert "s3cret" not in verifier
    assert scram_verifier("s3cret") != scram_verifier("s3cret")  # salted
