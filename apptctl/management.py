"""A minimal read-only client of the RabbitMQ management HTTP API (queue counts), stdlib only."""

import asyncio
import base64
import json
from dataclasses import dataclass
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import quote, unquote, urlsplit
from urllib.request import Request, urlopen

from infra.nodes import node_urls

QUEUE_COLUMNS = (
    "name",
    "type",
    "messages",
    "messages_ready",
    "messages_unacknowledged",
    "consumers",
    "head_message_timestamp",
)


class ManagementUnavailable(Exception):
    """The management API could not be asked (plugin not enabled, wrong credentials, broker down)."""


def vhost_of(amqp_url: str) -> str:
    """The virtual host an AMQP URL names ('/' when the path is empty or just '/'); of a cluster's node
    list, the first node's (they share it)."""
    path = urlsplit(node_urls(amqp_url)[0]).path
    return unquote(path[1:]) if len(path) > 1 else "/"


@dataclass(frozen=True)
class QueueCounts:
    ready: int | None
    unacknowledged: int | None
    consumers: int | None
    head_message_timestamp: int | None


class ManagementApi:
    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"RABBITMQ_MANAGEMENT_URL must be an http(s) URL, got {url!r}")
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        self.base = f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}"
        credentials = f"{unquote(parts.username or 'guest')}:{unquote(parts.password or 'guest')}"
        self._auth = "Basic " + base64.b64encode(credentials.encode()).decode()
        self._timeout = timeout_s

    def _get(self, path: str) -> Any:
        request = Request(self.base + path, headers={"Authorization": self._auth})
        try:
            with urlopen(request, timeout=self._timeout) as response:
                return json.loads(response.read())
        except HTTPError as exc:
            if exc.code == 404:
                return None
            raise ManagementUnavailable(f"HTTP {exc.code} from {self.base}{path}") from exc
        except (URLError, OSError, ValueError) as exc:
            raise ManagementUnavailable(f"{self.base}: {getattr(exc, 'reason', exc)}") from exc

    def _queue(self, vhost: str, name: str) -> QueueCounts | None:
        path = f"/api/queues/{quote(vhost, safe='')}/{quote(name, safe='')}?columns={','.join(QUEUE_COLUMNS)}"
        data = self._get(path)
        if data is None:
            return None
        return QueueCounts(
            ready=data.get("messages_ready"),
            unacknowledged=data.get("messages_unacknowledged"),
            consumers=data.get("consumers"),
            head_message_timestamp=data.get("head_message_timestamp"),
        )

    async def queues(self, vhost: str, names: list[str]) -> dict[str, QueueCounts | None]:
        """Counts per queue name (None for a queue the broker does not know); raises ManagementUnavailable.

        Counts come from the broker's statistics, refreshed every few seconds: a queue declared moments
        ago may have no counts yet (fields None)."""

        def fetch() -> dict[str, QueueCounts | None]:
            return {name: self._queue(vhost, name) for name in names}

        return await asyncio.to_thread(fetch)
