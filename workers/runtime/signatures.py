"""Which deliveries must carry a portal signature, and checking it before the body is parsed.

A worker that handles a message type portals publish (`exchange_role == "requests"`) checks every
delivery that came in through the portals' exchange, and, once the body is parsed, refuses such a type
that arrived without a good signature by any other way (so a missing or mislabelled AMQP `type` property
cannot skip the check). The signature binds a key to one producer: a message whose `producer` is not the
key's is refused too.
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

    @classmethod
    def for_handlers(
        cls,
        message_classes: Iterable[type[Envelope]],
        keyring: Keyring,
        exchange: str,
        limits: SignatureLimits,
    ) -> "SignaturePolicy | None":
        """The policy for a worker handling `message_classes`; None when none of them comes from portals."""
        signed = frozenset(type_name(c) for c in message_classes if c.exchange_role == PORTAL_ROLE)
        return cls(keyring, exchange, signed, limits) if signed else None

    def applies_to(self, exchange: str) -> bool:
        return exchange == self.exchange

    def check(self, body: bytes, headers) -> Verified | SignatureRefused:
        return verify(body, headers, self.keyring, now=self.clock(), limits=self.limits)

    def check_parsed(self, message: Envelope, verified: Verified | None) -> SignatureRefused | None:
        """After parsing: a portal type must have been verified, and by its own producer's key."""
        if message.type not in self.signed_types:
            return None
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
        return None
