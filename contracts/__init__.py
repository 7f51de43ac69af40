"""Wire contract of the appointment self-service pipeline: every message, its envelope and its route."""

from contracts.decoding import DecodeError, DecodeFailure, decode, encode
from contracts.envelope import Envelope
from contracts.registry import MESSAGE_TYPES, message_class

__all__ = ["MESSAGE_TYPES", "DecodeError", "DecodeFailure", "Envelope", "decode", "encode", "message_class"]
