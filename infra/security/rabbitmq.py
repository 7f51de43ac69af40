"""Per-worker RabbitMQ users: what each may configure, write and read, set through the management API.

Permissions are regular expressions over exchange and queue names (configure / write / read); topic
permissions narrow the routing keys a user may publish on a topic exchange, so policy_gate cannot
publish `appointment.rescheduled` and modify_handler cannot publish `modify.approved`.
"""

import base64
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import quote, unquote, urlsplit
from urllib.request import Request, urlopen

from aio_pika.abc import ExchangeType

from contracts.catalog import AUDITOR as CATALOG_AUDITOR
from contracts.catalog import EXTERNAL_PUBLISHERS, IDENTITIES, PORTAL_PUBLISHER, WORKER_NAMES
from infra.topology import DEAD_LETTER_ROLE, FEED_ROLE, REPLY_ROLE, RETRY_ROLE, Topology

NOTHING = "^$"


class ManagementError(Exception):
    """The management API refused or could not be reached; the message says which call and why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ManagementClient:
    """A small client of the RabbitMQ management HTTP API (stdlib only); credentials come from the URL
    and never appear in error messages."""

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("RABBITMQ_MANAGEMENT_URL must be an http(s) URL")
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        self.base = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"
        credentials = f"{unquote(parts.username or 'guest')}:{unquote(parts.password or 'guest')}"
        self._auth = "Basic " + base64.b64encode(credentials.encode()).decode()
        self._timeout = timeout_s

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        missing_ok: bool = False,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """One API call; None for a 404 when `missing_ok`. Raises ManagementError otherwise."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": self._auth, "content-type": "application/json", **(headers or {})}
        request = Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urlopen(request, timeout=self._timeout) as response:
                raw = response.read()
        except HTTPError as exc:
            if exc.code == 404 and missing_ok:
                return None
            detail = exc.read()[:200].decode("utf-8", "replace")
            raise ManagementError(f"{method} {path}: HTTP {exc.code} {detail}", exc.code) from None
        except (URLError, OSError) as exc:
            raise ManagementError(f"{method} {self.base}{path}: {getattr(exc, 'reason', exc)}") from None
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        return self.call("GET", path)

    def put_user(self, name: str, password: str) -> None:
        self.call("PUT", f"/api/users/{quote(name, safe='')}", {"password": password, "tags": ""})

    def delete_user(self, name: str) -> None:
        self.call("DELETE", f"/api/users/{quote(name, safe='')}", missing_ok=True)

    def put_permissions(self, vhost: str, user: str, permissions: "Permissions") -> None:
        path = f"/api/permissions/{quote(vhost, safe='')}/{quote(user, safe='')}"
        self.call(
            "PUT",
            path,
            {"configure": permissions.configure, "write": permissions.write, "read": permissions.read},
        )
        topic_path = f"/api/topic-permissions/{quote(vhost, safe='')}/{quote(user, safe='')}"
        self.call("DELETE", topic_path, missing_ok=True)
        for exchange, write in permissions.topics.items():
            self.call("PUT", topic_path, {"exchange": exchange, "write": write, "read": ".*"})

    def connections(self) -> list[dict]:
        return self.get("/api/connections?columns=name,peer_host,peer_port,user,client_properties") or []

    def close_connection(self, name: str, reason: str = "closed by an operator") -> bool:
        """True when the connection existed and was closed."""
        path = f"/api/connections/{quote(name, safe='')}"
        try:
            self.call("DELETE", path, headers={"X-Reason": reason})
        except ManagementError as exc:
            if exc.status == 404:
                return False
            raise
        return True


@dataclass(frozen=True)
class Permissions:
    configure: str
    write: str
    read: str
    topics: dict[str, str]  # topic exchange -> routing keys this user may publish with


# One user per identity of the catalog (contracts/catalog.py): each worker, each outside publisher, and
# the auditor (`apptctl reconcile` / `status` / `dlq list --audit`), which reads the database and its own
# copies of the dead letters (never the dead-letter queues themselves).
WORKERS = WORKER_NAMES
PUBLISHERS = tuple(publisher.name for publisher in EXTERNAL_PUBLISHERS)
AUDITOR = CATALOG_AUDITOR.name


class UnknownPublisher(ValueError):
    pass


def _names(*names: str) -> str:
    return "^(" + "|".join(re.escape(n) for n in sorted(set(names))) + ")$" if names else NOTHING


def _with(names: str, pattern: str) -> str:
    """`names` (an exact-name pattern from `_names`) or anything `pattern` matches."""
    return f"^{pattern}$" if names == NOTHING else f"{names[:-2]}|{pattern})$"


def _keys(patterns: set[str]) -> str:
    return "^(" + "|".join(sorted(patterns)) + ")$"


def key_pattern(routing_key: str) -> str:
    """A routing key as a regular expression; `{tenant_id}`-style placeholders match one word."""
    parts = re.split(r"(\{[^}]*\})", routing_key)
    return "".join("[^.]+" if part.startswith("{") else re.escape(part) for part in parts)


def publisher_of() -> dict[str, str]:
    """Who publishes each message type: the contracts' route declaration (contracts/routes.py, from the
    catalog's entries), so permissions, consumers' route checks and contract cannot disagree."""
    from contracts.routes import PUBLISHERS as declared

    return dict(declared)


def publishes(topology: Topology) -> dict[str, dict[str, set[str]]]:
    """identity -> exchange -> routing-key patterns it publishes, from the registered message classes."""
    from contracts.registry import MESSAGE_CLASSES, type_name
    from contracts.routes import publishers_of

    declared = publisher_of()
    routes: dict[str, dict[str, set[str]]] = {name: {} for name in IDENTITIES}
    from contracts.portal_v1 import ModifyOutcome  # a reply, consumed by portals only: not registered

    for cls in (*MESSAGE_CLASSES, ModifyOutcome):
        name = type_name(cls)
        publishers = publishers_of(name) if name in declared else (None,)
        for publisher in publishers:
            if publisher not in routes:
                raise UnknownPublisher(
                    f"message type {name!r}: no identity publishes it; list it under `publishes` of "
                    "one in contracts/catalog.py"
                )
            routes[publisher].setdefault(topology.exchange(cls.exchange_role), set()).add(
                key_pattern(cls.routing_key)
            )
    return routes


def permissions(topology: Topology) -> dict[str, Permissions]:
    """What each user needs, no more. Workers declare nothing (the topology is applied by an operator;
    their passive declares need no permission), publish only their own message types (topic permissions
    pin the routing keys), dead letters and delayed retries, and read only their own queue. Portal and
    office publishers only write their inputs."""
    routes = publishes(topology)

    def own(worker: str) -> list[str]:
        """The worker's own dead-letter and retry exchanges (never the shared ones, never another's)."""
        names = [topology.own_exchange(DEAD_LETTER_ROLE, worker)]
        try:
            names.append(topology.own_exchange(RETRY_ROLE, worker))  # where the topology has retries
        except KeyError:
            pass
        return names

    alternates = {
        spec.name: spec.alternate for spec in topology.exchanges if getattr(spec, "alternate", None)
    }
    topic = {spec.name for spec in topology.exchanges if spec.type == ExchangeType.TOPIC}
    result = {}
    for name in (*WORKERS, *PUBLISHERS):
        worker = name in WORKERS
        # publishing to an exchange whose unrouted messages go to an alternate exchange writes that too
        targets = [*routes[name], *(alternates[e] for e in routes[name] if e in alternates)]
        result[name] = Permissions(
            configure=NOTHING,
            write=_names(*targets, *(own(name) if worker else ())),
            read=_names(topology.queue_of(name).name) if worker else NOTHING,
            # topic permissions only bind topic exchanges (a direct one, like replies, routes by queue)
            topics={exchange: _keys(keys) for exchange, keys in routes[name].items() if exchange in topic},
        )
    # Portals declare, bind and consume their own reply and feed queues, under their prefix only: binding
    # needs write on the queue and read on the exchange (replies, feed), consuming read on the queue.
    # Declaring a queue that dead-letters needs write on that exchange too, which they have only for
    # requests (where anything must still be a signed `modify.requested`).
    portal = result[PORTAL_PUBLISHER.name]
    own_queues = re.escape(topology.portal_queue_prefix) + "[^/]+"
    readable = [topology.exchange(REPLY_ROLE), topology.exchange(FEED_ROLE)]
    result[PORTAL_PUBLISHER.name] = Permissions(
        configure=f"^{own_queues}$",
        write=_with(portal.write, own_queues),
        read=_with(_names(*readable), own_queues),
        topics=portal.topics,
    )
    # The auditor reads its own copies of the dead letters (infra/topology.py AUDIT), never the real
    # dead-letter queues: read permission on a queue would let it ack (remove) and purge them too.
    copies = [spec.name for spec in topology.audit_copies()]
    result[AUDITOR] = Permissions(configure=NOTHING, write=NOTHING, read=_names(*copies), topics={})
    return result
