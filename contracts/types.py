"""Constrained scalar types shared by every message: ids of a fixed form, bounded text, aware times."""

from typing import Annotated

from pydantic import AwareDatetime, Field, StringConstraints

# A tenant is a business; its id is a lowercase slug so it is safe in routing keys and log lines.
TenantId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]

# Ids issued by the office system or the portal (appointment, job, customer, project, contact, request).
EntityId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")]

# Short machine names: job types, business units, producers.
Slug = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,63}$")]

ShortText = Annotated[str, StringConstraints(min_length=1, max_length=200, strip_whitespace=True)]
LongText = Annotated[str, StringConstraints(min_length=1, max_length=1000, strip_whitespace=True)]

# Timestamps are always timezone-aware on the wire; a naive time is ambiguous across tenants.
Timestamp = AwareDatetime

Version = Annotated[int, Field(ge=0, le=2**62)]
