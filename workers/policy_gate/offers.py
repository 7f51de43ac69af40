"""What the portal offers for one appointment, as a timeline, pure: the same rules the gate decides with.

An offer changes with time alone at a few known instants (a notice window closing, a project's dates
coming within the horizon or leaving the lead time), so instead of re-deciding on a clock we compute
every segment up to the appointment's start once. The read store keeps the segments and the portal
reads the one that holds now: it never shows a button the gate would refuse, and needs no event when
a notice window is crossed. Facts or settings changing make the gate compute a new timeline.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from workers.policy_gate.rules import AppointmentFacts, Decision, Outcome, offer, window_rules
from workers.policy_gate.settings import EffectiveSettings

ACTIONS = ("reschedule", "cancel")


@dataclass(frozen=True)
class ActionOffer:
    """One action in one segment: offered (maybe only with the office's approval) or why not."""

    offered: bool
    needs_approval: bool
    reason_code: str | None
    reason: str | None

    @classmethod
    def of(cls, decision: Decision) -> "ActionOffer":
        if decision.outcome is Outcome.REJECTED:
            return cls(False, False, decision.reason_code, decision.reason_text)
        return cls(True, decision.outcome is Outcome.NEEDS_APPROVAL, None, None)


@dataclass(frozen=True)
class OfferSegment:
    """What holds from `valid_from` (None: from whenever it was computed) until `valid_until` (None:
    for ever). Segments of one timeline are contiguous and ordered."""

    valid_from: datetime | None
    valid_until: datetime | None
    reschedule: ActionOffer
    cancel: ActionOffer

    @property
    def modify_offered(self) -> bool:
        return self.reschedule.offered or self.cancel.offered

    def holds_at(self, moment: datetime) -> bool:
        return (self.valid_from is None or self.valid_from <= moment) and (
            self.valid_until is None or moment < self.valid_until
        )


def change_points(facts: AppointmentFacts, settings: EffectiveSettings) -> set[datetime]:
    """Every instant at which `check_action` can change its answer with nothing but time passing.

    - the notice window of each action closes at start - notice;
    - the earliest new start (now + lead, at least 1 µs) reaches the project's end at end - lead;
    - the project's start comes within the horizon at start - horizon.
    Outside these instants every comparison in the rules keeps its truth value.
    """
    points = {
        facts.window.start - timedelta(hours=settings.get(f"{action}.min_notice_hours")) for action in ACTIONS
    }
    rules = window_rules(facts, settings)
    if rules.not_after is not None:
        points.add(rules.not_after - rules.lead)
    if rules.not_before is not None:
        points.add(rules.not_before - rules.horizon)
    return points


def _offer_at(
    facts: AppointmentFacts, settings: EffectiveSettings, moment: datetime
) -> tuple[ActionOffer, ...]:
    shown = offer(requester_id=facts.customer_id, facts=facts, settings=settings, now=moment)
    return (ActionOffer.of(shown.reschedule), ActionOffer.of(shown.cancel))


def offer_timeline(facts: AppointmentFacts, settings: EffectiveSettings, now: datetime) -> list[OfferSegment]:
    """The offer for the appointment's customer (a project contact gets the same) from now on.

    The first segment has no start (it holds from the moment it was computed); equal neighbours merge,
    so an unchanged offer computed again later gives the same timeline.
    """
    moments = sorted(point for point in change_points(facts, settings) if point > now)
    segments: list[OfferSegment] = []
    current_from: datetime | None = None
    current = _offer_at(facts, settings, now)
    for moment in moments:
        following = _offer_at(facts, settings, moment)
        if following == current:
            continue
        segments.append(OfferSegment(current_from, moment, *current))
        current_from, current = moment, following
    segments.append(OfferSegment(current_from, None, *current))
    return segments


def segment_at(timeline: list[OfferSegment], moment: datetime) -> OfferSegment:
    """The segment of a timeline that holds at a moment at or after it was computed."""
    for segment in timeline:
        if segment.holds_at(moment):
            return segment
    raise ValueError("the timeline does not cover that moment")
