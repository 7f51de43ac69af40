"""Which deliveries must carry a portal signature, and checking it before the body is parsed.

A worker that handles a message type portals publish (`exchange_role == "requests"`) checks every
delivery that came in through the portals' exchange, and, once the body is parsed, refuses such a type
that arrived without a good signature by any other way (so a missing or mislabelled AMQP `type` property
cannot skip the check). The signature binds a key to one producer: a message whose `producer` is not the
key's is refused too, and so is one for a tenant the key is not bound to. A signature proves a portal
message and nothing else: a signed body of any other type is refused, whatever route brought it.
"""

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from contracts.envelope import Envelope
from contracts.reasons import DeadLetterReason
from contracts.registry import type_name
from contracts.signing import PORTAL_ROLE, Keyring, SignatureLimits, SignatureRefused, Verified, verify

__all__ = ["PORTAL_ROLE", "SignaturePolicy"]


@dataclass(frozen=True)
class SignaturePolicy:
    keyring: Keyring
    exchange: str  # the exchange portals publish to
    signed_types: frozenset[str]
    limits: SignatureLimits = field(default_factory=SignatureLimits)
    clock: Callable[[], float] = field(default=time.time)
    # Where portals' own queues are (`<namespace>.portal.`): a `reply_to` must name one of the signing
    # portal's, `<prefix><producer>.<name>` (empty: not checked).
    reply_prefix: str = ""

    @classmethod
    def for_handlers(
        cls,
        message_classes: Iterable[type[Envelope]],
        keyring: Keyring,
        exchange: str,
        limits: SignatureLimits,
        reply_prefix: str = "",
    ) -> "SignaturePolicy | None":
        """The policy for a worker handling `message_classes`; None when none of them comes from portals."""
        signed = frozenset(type_name(c) for c in message_classes if c.exchange_role == PORTAL_ROLE)
        return cls(keyring, exchange, signed, limits, reply_prefix=reply_prefix) if signed else None

    def applies_to(self, exchange: str) -> bool:
        return exchange == self.exchange

    def check(self, body: bytes, headers) -> Verified | SignatureRefused:
        return verify(body, headers, self.keyring, now=self.clock(), limits=self.limits)

    def check_parsed(self, message: Envelope, verified: Verified | None) -> SignatureRefused | None:
        """After parsing: a portal type must have been verified, by its own producer's key, for a tenant
        the key may act for; a verified (portal-signed) message must be a portal type."""
        if message.type not in self.signed_types:
            if verified is None:
                return None
            return SignatureRefused(
                DeadLetterReason.ROUTE_TYPE_MISMATCH,
                f"signed by portal key {verified.key.key_id!r}, but {message.type} is not a portal message",
            )
        if verified is None:
            return SignatureRefused(
                DeadLetterReason.SIGNATURE_MISSING,
                f"{message.type} is accepted only signed, through the {self.exchange} exchange",
            )
        if verified.key.producer != message.producer:
            return SignatureRefused(
                DeadLetterReason.SIGNATURE_PRODUCER_MISMATCH,
                f"signed with key {verified.key.key_id!r} of {verified.key.producer!r}, "
                f"but the message says producer {message.producer[:64]!r}",
            )
        if not verified.key.may_act_for(message.tenant_id):
            return SignatureRefused(
                DeadLetterReason.SIGNATURE_TENANT_NOT_ALLOWED,
                f"key {verified.key.key_id!r} of {verified.key.producer!r} may not act for tenant "
                f"{message.tenant_id[:64]!r}; add it to the producer's 'tenants' in the keyring if it should",
            )
        reply_to = getattr(message.payload, "reply_to", None)
        own_queues = f"{self.reply_prefix}{verified.key.producer}."
        if self.reply_prefix and reply_to is not None and not reply_to.startswith(own_queues):
            return SignatureRefused(
                DeadLetterReason.REPLY_TO_NOT_ALLOWED,
                f"reply_to {reply_to[:100]!r} is not a queue of {verified.key.producer!r}: name one of "
                f"its own, {own_queues}<name>",
            )
        return None
