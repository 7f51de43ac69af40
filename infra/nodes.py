"""The RabbitMQ nodes AMQP_URL names: one URL, or a cluster's nodes as URLs separated by commas."""

from collections.abc import Sequence

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractConnection
from aio_pika.robust_connection import RobustConnection
from yarl import URL


def node_urls(amqp_url: str) -> tuple[str, ...]:
    """`amqp://u:p@rabbit-1:5672/,amqp://u:p@rabbit-2:5672/` -> each node's URL, in the order given."""
    urls = tuple(part.strip() for part in amqp_url.split(",") if part.strip())
    if not urls:
        raise ValueError("AMQP_URL is empty: give one URL, or a cluster's node URLs separated by commas")
    return urls


async def connect_first(amqp_url: str, **kwargs) -> AbstractConnection:
    """A plain (not robust) connection to the first node that answers: for one-shot tools."""
    urls = node_urls(amqp_url)
    for url in urls[:-1]:
        try:
            return await aio_pika.connect(url, **kwargs)
        except (OSError, aiormq.exceptions.AMQPConnectionError):
            continue
    return await aio_pika.connect(urls[-1], **kwargs)


class ClusterConnection(RobustConnection):
    """A robust connection over a cluster's nodes: every (re)connection attempt goes to the next node, so
    a worker whose node died reconnects to a live one instead of waiting for the dead one to return.

    aio-pika connects to one URL only (mosquito/aio-pika#141). Its reconnection loop makes each attempt
    through one private method, overridden here to pick the node first; the URLs must share the user,
    password, vhost and options (those of the first one are used)."""

    def __init__(self, urls: Sequence[str], *, first: int = 0, **kwargs) -> None:
        self._nodes = tuple(URL(url) for url in urls)
        self._attempt = first
        super().__init__(self._nodes[first % len(self._nodes)], **kwargs)

    async def _RobustConnection__connect_transport(self) -> None:
        self.url = self._nodes[self._attempt % len(self._nodes)]
        self._attempt += 1
        await RobustConnection._RobustConnection__connect_transport(self)  # type: ignore[attr-defined]

    @property
    def node(self) -> URL:
        """The node the current (or last) attempt went to."""
        return self.url
