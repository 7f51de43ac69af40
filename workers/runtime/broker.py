"""The broker connection: robust reconnects, a confirm channel, and the one way we publish.

Every publish is persistent, mandatory (unroutable raises) and confirmed; unconfirmed means unsent.
"""

import asyncio
import contextlib
import time
from datetime import datetime

import aio_pika
import aiormq.exceptions
import structlog
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractRobustConnection
from pamqp import commands as amqp_spec

from contracts.decoding import CONTENT_TYPE, encode
from contracts.envelope import Envelope
from contracts.signing import SIGNATURE_HEADER, Keyring, SigningKey, signature_headers
from infra.nodes import ClusterConnection, node_urls
from infra.topology import Topology

log = structlog.get_logger(__name__)


def headers_for(message: Envelope) -> dict:
    """AMQP headers mirror the envelope so ops tools can filter without parsing bodies."""
    headers = {
        "x-message-type": message.type,
        "x-schema-version": message.schema_version,
        "x-tenant-id": message.tenant_id,
        "x-producer": message.producer,
    }
    if message.causation_id is not None:
        headers["x-causation-id"] = str(message.causation_id)
    return headers


def amqp_message(
    body: bytes,
    *,
    message_id: str,
    correlation_id: str,
    message_type: str,
    producer: str,
    headers: dict,
    timestamp: datetime | None = None,
) -> aio_pika.Message:
    return aio_pika.Message(
        body,
        content_type=CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message_id,
        correlation_id=correlation_id,
        type=message_type,
        app_id=producer,
        timestamp=timestamp,
        headers=headers,
    )


def amqp_properties(
    *,
    message_id: str,
    correlation_id: str,
    message_type: str,
    producer: str,
    headers: dict,
) -> amqp_spec.Basic.Properties:
    """The properties `amqp_message` gives a message (persistent, JSON), built directly."""
    return amqp_spec.Basic.Properties(
        content_type=CONTENT_TYPE,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT.value,
        message_id=message_id,
        correlation_id=correlation_id,
        message_type=message_type,
        app_id=producer,
        headers=headers,
    )


def to_amqp(message: Envelope) -> aio_pika.Message:
    return amqp_message(
        encode(message),
        message_id=str(message.message_id),
        correlation_id=message.correlation_id,
        message_type=message.type,
        producer=message.producer,
        headers=headers_for(message),
        timestamp=message.occurred_at,
    )


def sign(message: aio_pika.Message, key: SigningKey, *, now: float | None = None) -> aio_pika.Message:
    """Add `key`'s signature over the message's exact body (contracts/signing.py), as a portal does."""
    signed_at = int(time.time() if now is None else now)
    message.headers = {**(message.headers or {}), **signature_headers(message.body, key, signed_at=signed_at)}
    return message


class Broker:
    """One robust connection per process; a publisher-confirm channel shared by all publishes."""

    def __init__(
        self,
        amqp_url: str,
        topology: Topology,
        *,
        name: str,
        publish_timeout_s: float = 10.0,
        signer: Keyring | None = None,
    ):
        """`signer`: publish as the portals do (apptctl demo, fixture replays, tests, the bench): a message
        to the portals' exchange that is not signed yet is signed with its producer's (`app_id`) current
        key. Workers never get one."""
        self._urls = node_urls(amqp_url)  # one node, or a cluster's nodes (infra/nodes.py)
        self.topology = topology
        self._signer = signer
        self._portal_exchanges = topology.exchanges_with_role("requests")
        self._name = name
        self._publish_timeout = publish_timeout_s
        self.connection: AbstractRobustConnection | None = None
        self._publish_channel: AbstractChannel | None = None
        self._exchanges: dict[str, AbstractExchange] = {}

    async def connect(self, retry_for_s: float = 0.0) -> None:
        """Connect; with `retry_for_s`, keep trying that long so a worker started before the broker waits
        for it instead of crashing. Once connected, the robust connection reconnects by itself."""
        deadline = asyncio.get_running_loop().time() + retry_for_s
        delay = 0.5
        attempt = 0
        while True:
            # A cluster's nodes in turn: each attempt (and each reconnection later) tries the next one.
            connection = ClusterConnection(
                self._urls, first=attempt, client_properties={"connection_name": self._name}
            )
            try:
                await connection.connect()
                self.connection = connection
                break
            except (OSError, aiormq.exceptions.AMQPConnectionError) as exc:
                with contextlib.suppress(Exception):
                    await connection.close()
                attempt += 1
                if attempt % len(self._urls):
                    continue  # the next node of the cluster may answer right away
                if asyncio.get_running_loop().time() + delay > deadline:
                    raise
                log.warning("broker.connect_retry", error=repr(exc)[:200], delay_s=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self._publish_channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)

    async def channel(self, prefetch: int) -> AbstractChannel:
        """A consuming channel with per-consumer prefetch (global QoS is refused by quorum queues)."""
        assert self.connection is not None
        channel = await self.connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.set_qos(prefetch_count=prefetch, global_=False)
        return channel

    async def _exchange(self, name: str) -> AbstractExchange:
        exchange = self._exchanges.get(name)
        if exchange is None:
            assert self._publish_channel is not None
            exchange = await self._publish_channel.get_exchange(name, ensure=False)
            self._exchanges[name] = exchange
        return exchange

    async def publish(self, exchange_name: str, routing_key: str, message: aio_pika.Message) -> None:
        """Returns once the broker confirmed; raises DeliveryError (nack), PublishError (unroutable),
        TimeoutError, or a connection error otherwise."""
        if self._signer is not None and SIGNATURE_HEADER not in (message.headers or {}):
            if message.app_id and exchange_name in self._portal_exchanges:
                sign(message, self._signer.current_for(message.app_id))
        exchange = await self._exchange(exchange_name)
        await exchange.publish(message, routing_key, mandatory=True, timeout=self._publish_timeout)

    async def publish_body(
        self, exchange_name: str, routing_key: str, body: bytes, properties: amqp_spec.Basic.Properties
    ) -> None:
        """`publish` for a body and properties built by the caller (the outbox relay): the same frames,
        persistent, mandatory and confirmed, without an aio_pika.Message in between."""
        assert self._publish_channel is not None
        # The whole call under the timeout: on a closed channel it would otherwise wait for ever.
        async with asyncio.timeout(self._publish_timeout):
            channel = await self._publish_channel.get_underlay_channel()
            await channel.basic_publish(
                body,
                exchange=exchange_name,
                routing_key=routing_key,
                properties=properties,
                mandatory=True,
                timeout=self._publish_timeout,
            )

    async def publish_message(self, message: Envelope) -> None:
        await self.publish(self.topology.exchange(message.exchange_role), message.route(), to_amqp(message))

    @property
    def is_connected(self) -> bool:
        return self.connection is not None and not self.connection.is_closed

    async def close(self) -> None:
        if self.connection is not None:
            await self.connection.close()
            self.connection = None
