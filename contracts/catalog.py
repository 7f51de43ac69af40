"""The catalog of identities: every worker, publisher and the auditor, and what each owns, reads and sends.

Declared once, here; everything else reads it:
  contracts/routes.py          who publishes each message type (`PUBLISHERS`, `ALSO_PUBLISHED_BY`) and what
                               each worker's queue is bound to (`SUBSCRIPTIONS`), the routes that follow
  infra/topology.py            a work queue, a dead-letter queue, delay queues and own exchanges per worker
  infra/security/rabbitmq.py   one broker user per identity, allowed only its routes
  infra/security/postgres.py   one database role per worker: its own schema, the tables it reads
                               elsewhere, its inbox and outbox partitions; the auditor reads everything
  infra/db/tables.py           the inbox and outbox partition per worker
  workers/registry.py          each worker's handlers and whether it takes tenants in turns
  contracts/asyncapi.py        who sends and receives each message, in the contract document
  apptctl/reconcile/           which worker a request stopped at
"""

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

# The database schemas: each worker owns one; the messaging schema holds each worker's own inbox and
# outbox partitions (migration 0008).
POLICY = "policy"
SCHEDULING = "scheduling"
PORTAL = "portal"
MESSAGING = "messaging"

SELECT = ("SELECT",)
Subscription = tuple[str, str]  # (exchange role, routing-key pattern in AMQP topic syntax)


@dataclass(frozen=True)
class Worker:
    """One of our workers: a broker user, a database role, a work queue, an inbox and an outbox."""

    name: str
    summary: str  # one sentence, for the contract document
    owns: str  # its database schema: every table in it, SELECT, INSERT, UPDATE, DELETE
    # Tables outside its own schema it uses, and how (besides its inbox and outbox partitions).
    reads: Mapping[str, tuple[str, ...]]
    consumes: tuple[Subscription, ...]  # its work queue's bindings; it accepts only the routes they match
    publishes: tuple[str, ...]  # message types it is the publisher of
    handlers: str  # the module whose `HANDLERS` dict it runs
    # Deliveries held in hand wait in one lane per tenant, tenants taking turns (APPT_FAIR_WINDOW).
    tenant_lanes: bool = False
    # Message types another identity publishes and this one too (contracts/routes.py ALSO_PUBLISHED_BY).
    also_publishes: tuple[str, ...] = ()

    @property
    def emits_events(self) -> bool:
        """It publishes messages, so writes them to an outbox partition a relay publishes from."""
        return bool(self.publishes or self.also_publishes)

    @property
    def inbox_table(self) -> str:
        """Its own inbox partition: the only one its role may claim messages in."""
        return f"{MESSAGING}.{self.name}_inbox"

    @property
    def outbox_table(self) -> str:
        """Its own outbox partition: the only one its role may write events to."""
        return f"{MESSAGING}.{self.name}_outbox"


@dataclass(frozen=True)
class Publisher:
    """A system outside ours that sends us messages: a broker user, no queue, no database role."""

    name: str
    summary: str
    publishes: tuple[str, ...]
    also_publishes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Auditor:
    """`apptctl reconcile` / `status` / `dlq list --audit`: reads every worker's schema (every tenant) and
    its own copies of the dead letters (infra/topology.py AUDIT), never the dead-letter queues themselves;
    publishes nothing, consumes nothing, writes nothing."""

    name: str


POLICY_GATE = Worker(
    name="policy_gate",
    summary="Our worker that decides each request against the business's rules.",
    owns=POLICY,  # settings layers and history, decisions, offers
    # The schedule's appointments, projects and project contacts, nothing else of it.
    reads=MappingProxyType(
        {
            f"{SCHEDULING}.appointments": SELECT,
            f"{SCHEDULING}.projects": SELECT,
            f"{SCHEDULING}.project_contacts": SELECT,
        }
    ),
    consumes=(
        ("requests", "modify.requested"),
        ("office", "office.portal_settings.updated"),
        ("office", "office.approval.decided"),
        ("internal", "offers.refresh"),  # to itself: a large settings change, a chunk at a time
        # Facts an offer rests on that the gate cannot know in advance (never `appointment.*`: that would
        # bring back the gate's own offers; a customer's change carries the offer the gate approved it with).
        ("events", "appointment.updated"),
        ("events", "project.updated"),
        ("events", "modify.failed"),  # an approved change that did not happen: its offer did not either
    ),
    publishes=(
        "modify.approved",
        "offers.refresh",
        "modify.rejected",
        "modify.awaiting_approval",
        "appointment.offer_changed",
    ),
    # The office's outcomes of settings and approvals (those of appointment records, capacity and
    # projects come from the scheduling worker).
    also_publishes=("office.outcome",),
    handlers="workers.policy_gate.handlers",
    tenant_lanes=True,
)
MODIFY_HANDLER = Worker(
    name="modify_handler",
    summary="Our worker that applies approved changes and records the office's appointments.",
    owns=SCHEDULING,  # appointments, jobs, projects, contacts, capacity windows
    reads=MappingProxyType({}),
    consumes=(
        ("internal", "modify.approved"),
        ("office", "office.appointment.recorded"),
        ("office", "office.capacity.updated"),
        ("office", "office.project.recorded"),
    ),
    publishes=(
        "modify.failed",
        "appointment.rescheduled",
        "appointment.canceled",
        "appointment.updated",
        "job.status_changed",
        "capacity.window_changed",
        "project.updated",
        "office.outcome",
    ),
    handlers="workers.modify_handler.handlers",
)
PORTAL_SYNC = Worker(
    name="portal_sync",
    summary="Our worker that projects requests and results into the portal read store.",
    owns=PORTAL,  # the read store
    reads=MappingProxyType({}),
    consumes=(
        ("requests", "modify.requested"),
        ("events", "#"),
        ("office", "office.capacity.updated"),  # only the business unit's time zone (issue 13)
    ),
    # The live feed, and the reply on a portal's own queue (not routed by type).
    publishes=("portal.view_changed", "modify.outcome"),
    handlers="workers.portal_sync.handlers",
    tenant_lanes=True,  # the live feed; a flood's refusals reach it too
)
PORTAL_PUBLISHER = Publisher(
    name="portal",
    summary="A customer portal (external): publishes the customer's modify requests and may receive "
    "their outcomes on a reply queue of its own.",
    publishes=("modify.requested",),
)
OFFICE_PUBLISHER = Publisher(
    name="office",
    summary="The office system (external): publishes appointments and self-service settings.",
    publishes=(
        "office.appointment.recorded",
        "office.portal_settings.updated",
        "office.approval.decided",
        "office.capacity.updated",
        "office.project.recorded",
    ),
)
AUDITOR = Auditor(name="auditor")

WORKERS: tuple[Worker, ...] = (POLICY_GATE, MODIFY_HANDLER, PORTAL_SYNC)
EXTERNAL_PUBLISHERS: tuple[Publisher, ...] = (PORTAL_PUBLISHER, OFFICE_PUBLISHER)
WORKER_NAMES: tuple[str, ...] = tuple(worker.name for worker in WORKERS)
# Every broker user, in the order `apptctl security apply` creates them.
IDENTITIES: tuple[str, ...] = (*WORKER_NAMES, *(p.name for p in EXTERNAL_PUBLISHERS), AUDITOR.name)
# Every database role of a namespace (publishers have no database).
DATABASE_IDENTITIES: tuple[str, ...] = (*WORKER_NAMES, AUDITOR.name)
# The schemas of the workers' roles: their own, and the messaging schema of their inboxes and outboxes.
WORKER_SCHEMAS: tuple[str, ...] = (*(worker.owns for worker in WORKERS), MESSAGING)


def worker(name: str) -> Worker:
    """The catalog entry of the worker called `name`."""
    for entry in WORKERS:
        if entry.name == name:
            return entry
    raise KeyError(f"unknown worker {name!r}; choose one of {', '.join(WORKER_NAMES)}")
