"""Settings resolution, pure: layers (business, business unit, job type, project) -> effective settings.

The most specific layer that sets a field wins, field by field; a layer that leaves a field null
inherits it. Every effective value remembers the level that set it, so a decision can say which
setting decided. With no layer at all, self-service is off (the safe default).
"""

from dataclasses import dataclass, field

from contracts.common import AppointmentStatus
from contracts.office_v2 import PRECEDENCE, Permission, ScopeLevel, SettingsLayer

DEFAULT_BLOCKING = frozenset(
    {
        AppointmentStatus.DISPATCHED,
        AppointmentStatus.WORKING,
        AppointmentStatus.DONE,
        AppointmentStatus.CANCELED,
    }
)

# Every setting a rule reads, with its default. Paths are "section.field" or "field".
DEFAULTS: dict[str, object] = {
    "feature_enabled": False,
    "blocking_statuses": DEFAULT_BLOCKING,
    "reschedule.confirmed": Permission.DENY,
    "reschedule.unconfirmed": Permission.DENY,
    "reschedule.min_notice_hours": 0,
    "reschedule.min_lead_hours": 0,
    "reschedule.max_horizon_days": 365,
    "reschedule.max_customer_reschedules": None,  # no limit
    "cancel.confirmed": Permission.DENY,
    "cancel.unconfirmed": Permission.DENY,
    "cancel.min_notice_hours": 0,
    "cancel.reason_required": False,
    "cancel.allowed_reasons": None,  # any reason
}
DEFAULT_LEVEL = "default"
# The word a more specific layer uses to lift a limit a less specific one set (null would inherit it).
LIFTED = {"reschedule.max_customer_reschedules": "unlimited", "cancel.allowed_reasons": "any"}


@dataclass(frozen=True)
class ScopedLayer:
    level: ScopeLevel
    key: str | None
    settings: SettingsLayer
    settings_version: int = 0


@dataclass(frozen=True)
class EffectiveSettings:
    values: dict[str, object]
    source: dict[str, str] = field(default_factory=dict)  # path -> level that set it, or "default"

    def get(self, path: str):
        return self.values[path]

    def level_of(self, path: str) -> str:
        return self.source.get(path, DEFAULT_LEVEL)


def _read(layer: SettingsLayer, path: str):
    if "." in path:
        section, name = path.split(".", 1)
        return getattr(getattr(layer, section), name)
    return getattr(layer, path)


def _normalise(path: str, value):
    if path == "blocking_statuses":
        return frozenset(AppointmentStatus(s) for s in value)
    if path == "cancel.allowed_reasons":
        return None if value == LIFTED[path] else tuple(value)
    if path == "reschedule.max_customer_reschedules" and value == LIFTED[path]:
        return None
    return value


def resolve(layers: list[ScopedLayer]) -> EffectiveSettings:
    """Fold the layers that apply to one appointment, least specific first."""
    values = dict(DEFAULTS)
    source: dict[str, str] = {}
    for layer in sorted(layers, key=lambda item: PRECEDENCE.index(item.level)):
        for path in DEFAULTS:
            value = _read(layer.settings, path)
            if value is not None:
                values[path] = _normalise(path, value)
                source[path] = layer.level.value
    return EffectiveSettings(values, source)


def applicable_scopes(
    business_unit: str, job_type: str, project_id: str | None
) -> list[tuple[ScopeLevel, str | None]]:
    """Which layers apply to an appointment: its business, business unit, job type and project."""
    scopes = [
        (ScopeLevel.BUSINESS, None),
        (ScopeLevel.BUSINESS_UNIT, business_unit),
        (ScopeLevel.JOB_TYPE, job_type),
    ]
    if project_id is not None:
        scopes.append((ScopeLevel.PROJECT, project_id))
    return scopes
