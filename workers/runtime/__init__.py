"""Shared worker runtime: connections, consume -> decode -> handle -> commit -> ack, inbox, outbox, logs."""
