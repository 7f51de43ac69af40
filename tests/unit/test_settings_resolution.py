"""Settings resolution: layers (business < business unit < job type < project) -> effective settings.

Tables for precedence field by field, then hypothesis properties against an independent model, then the
validators that keep an invalid layer out."""

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts.common import AppointmentStatus
from contracts.office_v2 import (
    MAX_HORIZON_DAYS,
    MAX_NOTICE_HOURS,
    PRECEDENCE,
    CancelSettings,
    Permission,
    RescheduleSettings,
    ScopeLevel,
    SettingsLayer,
    SettingsScope,
)
from workers.policy_gate.settings import (
    DEFAULT_BLOCKING,
    DEFAULTS,
    EffectiveSettings,
    ScopedLayer,
    applicable_scopes,
    resolve,
)

BUSINESS, BUSINESS_UNIT, JOB_TYPE, PROJECT = ScopeLevel
KEYS = {BUSINESS: None, BUSINESS_UNIT: "plumbing", JOB_TYPE: "boiler-service", PROJECT: "proj-7"}
CANCELED = AppointmentStatus.CANCELED
DONE = AppointmentStatus.DONE
DISPATCHED = AppointmentStatus.DISPATCHED

PATHS = list(DEFAULTS)


def layer_setting(path: str, value: object) -> SettingsLayer:
    """A layer that sets exactly one field."""
    if "." in path:
        section, name = path.split(".", 1)
        return SettingsLayer(**{section: {name: value}})
    return SettingsLayer(**{path: value})


def merge(*layers: SettingsLayer) -> SettingsLayer:
    """One layer with every field the given layers set (later wins); used to build multi-field layers."""
    data: dict = {}
    for layer in layers:
        dumped = layer.model_dump(exclude_none=True)
        for key, value in dumped.items():
            if isinstance(value, dict):
                data.setdefault(key, {}).update(value)
            else:
                data[key] = value
    return SettingsLayer(**data)


def scoped(level: ScopeLevel, settings: SettingsLayer) -> ScopedLayer:
    return ScopedLayer(level, KEYS[level], settings)


# Two different valid values per field, as (raw value in the layer, effective value after resolution).
# The "low" values include falsy ones (False, 0) so a test fails if resolution treats falsy as unset.
VALUES: dict[str, tuple[tuple[object, object], tuple[object, object]]] = {
    "feature_enabled": ((True, True), (False, False)),
    "blocking_statuses": (
        ([DONE, CANCELED], frozenset({DONE, CANCELED})),
        (["canceled"], frozenset({CANCELED})),
    ),
    "reschedule.confirmed": (
        (Permission.ALLOW, Permission.ALLOW),
        ("require_approval", Permission.REQUIRE_APPROVAL),
    ),
    "reschedule.unconfirmed": ((Permission.REQUIRE_APPROVAL,) * 2, (Permission.ALLOW,) * 2),
    "reschedule.min_notice_hours": ((12, 12), (0, 0)),
    "reschedule.min_lead_hours": ((36, 36), (0, 0)),
    "reschedule.max_horizon_days": ((90, 90), (1, 1)),
    "reschedule.max_customer_reschedules": ((3, 3), (0, 0)),
    "cancel.confirmed": ((Permission.ALLOW,) * 2, (Permission.REQUIRE_APPROVAL,) * 2),
    "cancel.unconfirmed": ((Permission.REQUIRE_APPROVAL,) * 2, (Permission.ALLOW,) * 2),
    "cancel.min_notice_hours": ((48, 48), (0, 0)),
    "cancel.reason_required": ((True, True), (False, False)),
    "cancel.allowed_reasons": (
        (["Moving", "Too expensive"], ("Moving", "Too expensive")),
        (["Other"], ("Other",)),
    ),
}


def test_values_table_covers_every_setting_with_two_distinct_non_default_values() -> None:
    assert set(VALUES) == set(DEFAULTS)
    for path, ((_, first), (_, second)) in VALUES.items():
        assert first != second, path
        assert first != DEFAULTS[path] or second != DEFAULTS[path], path


# --- defaults --------------------------------------------------------------------------------------


def test_no_layers_gives_the_documented_defaults_and_self_service_off() -> None:
    effective = resolve([])
    assert effective.values == DEFAULTS
    assert effective.get("feature_enabled") is False
    assert effective.get("blocking_statuses") == frozenset(
        {DISPATCHED, AppointmentStatus.WORKING, DONE, CANCELED}
    )
    for action in ("reschedule", "cancel"):
        for confirmation in ("confirmed", "unconfirmed"):
            assert effective.get(f"{action}.{confirmation}") is Permission.DENY
    assert effective.get("reschedule.max_customer_reschedules") is None
    assert effective.get("cancel.allowed_reasons") is None
    assert effective.get("reschedule.max_horizon_days") == 365
    assert all(effective.level_of(path) == "default" for path in PATHS)


@pytest.mark.parametrize("level", list(ScopeLevel), ids=[lvl.value for lvl in ScopeLevel])
def test_an_empty_layer_changes_nothing(level: ScopeLevel) -> None:
    effective = resolve([scoped(level, SettingsLayer())])
    assert effective.values == DEFAULTS
    assert all(effective.level_of(path) == "default" for path in PATHS)


@pytest.mark.parametrize("path", PATHS)
def test_fields_a_layer_leaves_untouched_stay_default(path: str) -> None:
    (raw, value), _ = VALUES[path]
    effective = resolve([scoped(JOB_TYPE, layer_setting(path, raw))])
    assert effective.get(path) == value
    assert effective.level_of(path) == "job_type"
    for other in PATHS:
        if other != path:
            assert effective.get(other) == DEFAULTS[other], other
            assert effective.level_of(other) == "default", other


def test_level_of_an_unknown_path_is_default_and_get_of_it_raises() -> None:
    effective = resolve([scoped(BUSINESS, SettingsLayer(feature_enabled=True))])
    assert effective.level_of("reschedule.nonexistent") == "default"
    with pytest.raises(KeyError):
        effective.get("reschedule.nonexistent")


def test_defaults_table_is_not_mutated_by_resolution() -> None:
    before = dict(DEFAULTS)
    resolve([scoped(PROJECT, merge(*(layer_setting(p, VALUES[p][0][0]) for p in PATHS)))])
    assert before == DEFAULTS
    assert DEFAULTS["blocking_statuses"] is DEFAULT_BLOCKING


# --- precedence, field by field --------------------------------------------------------------------

PRECEDENCE_CASES = [
    pytest.param(path, level, id=f"{path}-set-at-{level.value}") for path in PATHS for level in PRECEDENCE
]


@pytest.mark.parametrize(("path", "level"), PRECEDENCE_CASES)
def test_the_most_specific_layer_that_sets_a_field_wins(path: str, level: ScopeLevel) -> None:
    """Every level is present. Less specific levels set the other value, the level under test sets the
    target value, more specific levels leave the field null: the target wins and its level is recorded."""
    (target_raw, target), (other_raw, _) = VALUES[path]
    index = PRECEDENCE.index(level)
    layers = []
    for position, each in enumerate(PRECEDENCE):
        if position < index:
            layers.append(scoped(each, layer_setting(path, other_raw)))
        elif position == index:
            layers.append(scoped(each, layer_setting(path, target_raw)))
        else:
            layers.append(scoped(each, SettingsLayer()))
    effective = resolve(layers)
    assert effective.get(path) == target
    assert effective.level_of(path) == level.value


@pytest.mark.parametrize(
    ("path", "level"), [case for case in PRECEDENCE_CASES if case.values[1] is not PRECEDENCE[-1]]
)
def test_a_less_specific_layer_never_overrides(path: str, level: ScopeLevel) -> None:
    """The level under test sets the target; every more specific level sets the other value: the most
    specific wins, whatever the level under test said."""
    (target_raw, _), (other_raw, other) = VALUES[path]
    index = PRECEDENCE.index(level)
    layers = [scoped(level, layer_setting(path, target_raw))]
    layers += [scoped(each, layer_setting(path, other_raw)) for each in PRECEDENCE[index + 1 :]]
    effective = resolve(layers)
    assert effective.get(path) == other
    assert effective.level_of(path) == PRECEDENCE[-1].value


@pytest.mark.parametrize("path", PATHS)
def test_a_null_field_inherits_from_the_less_specific_layer(path: str) -> None:
    (raw, value), _ = VALUES[path]
    effective = resolve(
        [
            scoped(BUSINESS, layer_setting(path, raw)),
            scoped(BUSINESS_UNIT, SettingsLayer()),
            scoped(JOB_TYPE, SettingsLayer()),
            scoped(PROJECT, SettingsLayer()),
        ]
    )
    assert effective.get(path) == value
    assert effective.level_of(path) == "business"


def test_each_field_keeps_its_own_source() -> None:
    """A project that only overrides the reschedule permission leaves every other field with the level
    that set it."""
    effective = resolve(
        [
            scoped(
                BUSINESS,
                SettingsLayer(
                    feature_enabled=True,
                    reschedule=RescheduleSettings(confirmed="allow", min_lead_hours=24),
                    cancel=CancelSettings(reason_required=True),
                ),
            ),
            scoped(BUSINESS_UNIT, SettingsLayer(reschedule=RescheduleSettings(max_horizon_days=30))),
            scoped(JOB_TYPE, SettingsLayer(cancel=CancelSettings(allowed_reasons=["Moving"]))),
            scoped(PROJECT, SettingsLayer(reschedule=RescheduleSettings(confirmed="require_approval"))),
        ]
    )
    expected = {
        "feature_enabled": (True, "business"),
        "reschedule.confirmed": (Permission.REQUIRE_APPROVAL, "project"),
        "reschedule.min_lead_hours": (24, "business"),
        "reschedule.max_horizon_days": (30, "business_unit"),
        "cancel.reason_required": (True, "business"),
        "cancel.allowed_reasons": (("Moving",), "job_type"),
        "reschedule.unconfirmed": (Permission.DENY, "default"),
        "cancel.min_notice_hours": (0, "default"),
    }
    for path, (value, level) in expected.items():
        assert (effective.get(path), effective.level_of(path)) == (value, level), path


def test_a_falsy_value_overrides_a_truthy_one() -> None:
    effective = resolve(
        [
            scoped(BUSINESS, SettingsLayer(feature_enabled=True, reschedule={"max_customer_reschedules": 5})),
            scoped(PROJECT, SettingsLayer(feature_enabled=False, reschedule={"max_customer_reschedules": 0})),
        ]
    )
    assert effective.get("feature_enabled") is False
    assert effective.get("reschedule.max_customer_reschedules") == 0
    assert effective.level_of("feature_enabled") == effective.level_of("reschedule.max_customer_reschedules")
    assert effective.level_of("feature_enabled") == "project"


def test_layers_in_any_order_resolve_the_same() -> None:
    layers = [
        scoped(BUSINESS, SettingsLayer(feature_enabled=True, reschedule={"confirmed": "allow"})),
        scoped(BUSINESS_UNIT, SettingsLayer(reschedule={"confirmed": "deny", "min_notice_hours": 4})),
        scoped(
            JOB_TYPE,
            SettingsLayer(reschedule={"confirmed": "require_approval"}, blocking_statuses=["canceled"]),
        ),
        scoped(PROJECT, SettingsLayer(reschedule={"min_notice_hours": 8})),
    ]
    results = [resolve(list(order)) for order in itertools.permutations(layers)]
    assert all(result == results[0] for result in results)
    assert results[0].get("reschedule.confirmed") is Permission.REQUIRE_APPROVAL
    assert results[0].level_of("reschedule.confirmed") == "job_type"
    assert results[0].get("reschedule.min_notice_hours") == 8
    assert results[0].level_of("reschedule.min_notice_hours") == "project"


def test_resolution_does_not_depend_on_the_layer_key_or_version() -> None:
    base = SettingsLayer(feature_enabled=True)
    assert resolve([ScopedLayer(JOB_TYPE, "a", base, 1)]) == resolve([ScopedLayer(JOB_TYPE, "b", base, 99)])


def test_resolved_collections_are_immutable_values() -> None:
    effective = resolve(
        [
            scoped(
                BUSINESS,
                SettingsLayer(blocking_statuses=["done", "canceled"], cancel={"allowed_reasons": ["A"]}),
            )
        ]
    )
    assert isinstance(effective.get("blocking_statuses"), frozenset)
    assert all(isinstance(s, AppointmentStatus) for s in effective.get("blocking_statuses"))
    assert isinstance(effective.get("cancel.allowed_reasons"), tuple)


# --- applicable scopes -----------------------------------------------------------------------------


def test_applicable_scopes_with_a_project() -> None:
    assert applicable_scopes("plumbing", "boiler-service", "proj-7") == [
        (BUSINESS, None),
        (BUSINESS_UNIT, "plumbing"),
        (JOB_TYPE, "boiler-service"),
        (PROJECT, "proj-7"),
    ]


def test_applicable_scopes_without_a_project() -> None:
    assert applicable_scopes("plumbing", "boiler-service", None) == [
        (BUSINESS, None),
        (BUSINESS_UNIT, "plumbing"),
        (JOB_TYPE, "boiler-service"),
    ]


def test_applicable_scopes_are_least_specific_first_and_valid_scopes() -> None:
    scopes = applicable_scopes("u", "j", "p")
    assert [level for level, _ in scopes] == list(PRECEDENCE)
    for level, key in scopes:
        SettingsScope(level=level, key=key)  # each one is a valid scope on the wire


# --- properties ------------------------------------------------------------------------------------

PERMISSIONS = st.sampled_from(Permission)
STATUS_SETS = st.lists(
    st.sampled_from([s for s in AppointmentStatus if s is not CANCELED]), unique=True, max_size=3
).map(lambda statuses: [*statuses, CANCELED])
REASONS = st.lists(
    st.sampled_from(["Moving", "Too expensive", "Other", "Found someone else"]), min_size=1, unique=True
)


def maybe(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), strategy)


@st.composite
def settings_layers(draw: st.DrawFn) -> SettingsLayer:
    lead = draw(maybe(st.integers(0, 200)))
    horizon = draw(maybe(st.integers(1, MAX_HORIZON_DAYS)))
    if lead is not None and horizon is not None and lead >= horizon * 24:
        horizon = None  # one layer must not contradict itself; layers may still contradict each other
    return SettingsLayer(
        feature_enabled=draw(maybe(st.booleans())),
        blocking_statuses=draw(maybe(STATUS_SETS)),
        reschedule=RescheduleSettings(
            confirmed=draw(maybe(PERMISSIONS)),
            unconfirmed=draw(maybe(PERMISSIONS)),
            min_notice_hours=draw(maybe(st.integers(0, MAX_NOTICE_HOURS))),
            min_lead_hours=lead,
            max_horizon_days=horizon,
            max_customer_reschedules=draw(maybe(st.integers(0, 100))),
        ),
        cancel=CancelSettings(
            confirmed=draw(maybe(PERMISSIONS)),
            unconfirmed=draw(maybe(PERMISSIONS)),
            min_notice_hours=draw(maybe(st.integers(0, MAX_NOTICE_HOURS))),
            reason_required=draw(maybe(st.booleans())),
            allowed_reasons=draw(maybe(REASONS)),
        ),
    )


@st.composite
def layer_sets(draw: st.DrawFn, levels: st.SearchStrategy | None = None) -> list[ScopedLayer]:
    """The layers that apply to one appointment: at most one per level, in any order."""
    if levels is None:
        levels = st.lists(st.sampled_from(ScopeLevel), unique=True)
    chosen = draw(levels)
    return [scoped(level, draw(settings_layers())) for level in chosen]


def model_value(layer: SettingsLayer, path: str) -> object:
    """Read a field through the layer's JSON form, independent of the code under test."""
    data = layer.model_dump(mode="json")
    for part in path.split("."):
        data = data[part]
    return data


def model_normalise(path: str, raw: object) -> object:
    if path == "blocking_statuses":
        return frozenset(AppointmentStatus(s) for s in raw)
    if path == "cancel.allowed_reasons":
        return tuple(raw)
    if path.endswith("confirmed"):
        return Permission(raw)
    return raw


def model_resolve(layers: list[ScopedLayer]) -> dict[str, tuple[object, str]]:
    """Independent model: for each field, the layer of highest rank among those that set it."""
    rank = {
        ScopeLevel.BUSINESS: 1,
        ScopeLevel.BUSINESS_UNIT: 2,
        ScopeLevel.JOB_TYPE: 3,
        ScopeLevel.PROJECT: 4,
    }
    result = {}
    for path, default in DEFAULTS.items():
        setters = [layer for layer in layers if model_value(layer.settings, path) is not None]
        if not setters:
            result[path] = (default, "default")
            continue
        winner = max(setters, key=lambda layer: rank[layer.level])
        result[path] = (model_normalise(path, model_value(winner.settings, path)), winner.level.value)
    return result


def as_pairs(effective: EffectiveSettings) -> dict[str, tuple[object, str]]:
    return {path: (effective.get(path), effective.level_of(path)) for path in DEFAULTS}


@given(layers=layer_sets())
def test_effective_value_is_from_the_most_specific_layer_that_sets_it(layers: list[ScopedLayer]) -> None:
    assert as_pairs(resolve(layers)) == model_resolve(layers)


@given(layers=layer_sets(), data=st.data())
def test_resolution_is_invariant_under_permutation(layers: list[ScopedLayer], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(layers))
    assert resolve(list(shuffled)) == resolve(layers)


@given(data=st.data())
def test_adding_a_layer_changes_only_the_fields_it_sets(data: st.DataObject) -> None:
    levels = data.draw(st.lists(st.sampled_from(ScopeLevel), unique=True, min_size=1))
    new_level, *existing = levels
    layers = data.draw(layer_sets(st.just(existing)))
    new = scoped(new_level, data.draw(settings_layers()))
    before = resolve(layers)
    after = resolve([*layers, new])
    for path in DEFAULTS:
        sets_it = model_value(new.settings, path) is not None
        outranked = any(
            model_value(layer.settings, path) is not None
            and PRECEDENCE.index(layer.level) > PRECEDENCE.index(new_level)
            for layer in layers
        )
        if sets_it and not outranked:
            assert after.get(path) == model_normalise(path, model_value(new.settings, path)), path
            assert after.level_of(path) == new_level.value, path
        else:
            assert after.get(path) == before.get(path), path
            assert after.level_of(path) == before.level_of(path), path


@given(layers=layer_sets())
def test_every_effective_value_has_the_type_the_rules_expect(layers: list[ScopedLayer]) -> None:
    effective = resolve(layers)
    assert isinstance(effective.get("feature_enabled"), bool)
    assert CANCELED in effective.get("blocking_statuses")
    for action in ("reschedule", "cancel"):
        for confirmation in ("confirmed", "unconfirmed"):
            assert isinstance(effective.get(f"{action}.{confirmation}"), Permission)
        assert isinstance(effective.get(f"{action}.min_notice_hours"), int)
    assert effective.level_of("feature_enabled") in {"default", *(lvl.value for lvl in ScopeLevel)}


# --- validators ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lead", "horizon", "valid"),
    [
        pytest.param(24, 1, False, id="lead-equals-horizon"),
        pytest.param(25, 1, False, id="lead-longer-than-horizon"),
        pytest.param(23, 1, True, id="lead-an-hour-shorter-than-horizon"),
        pytest.param(0, 1, True, id="no-lead"),
        pytest.param(MAX_NOTICE_HOURS, MAX_HORIZON_DAYS, True, id="both-at-their-maximum"),
        pytest.param(200, None, True, id="lead-alone-is-not-checked-in-the-layer"),
        pytest.param(None, 1, True, id="horizon-alone"),
    ],
)
def test_lead_time_must_be_shorter_than_the_horizon(
    lead: int | None, horizon: int | None, valid: bool
) -> None:
    build = lambda: RescheduleSettings(min_lead_hours=lead, max_horizon_days=horizon)  # noqa: E731
    if valid:
        build()
        SettingsLayer(reschedule={"min_lead_hours": lead, "max_horizon_days": horizon})
    else:
        with pytest.raises(ValidationError, match="min_lead_hours must be shorter"):
            build()
        with pytest.raises(ValidationError, match="min_lead_hours must be shorter"):
            SettingsLayer(reschedule={"min_lead_hours": lead, "max_horizon_days": horizon})


@pytest.mark.parametrize(
    ("reasons", "valid"),
    [
        pytest.param(["Moving", "moving"], False, id="same-reason-other-case"),
        pytest.param(["Moving", "Other", "MOVING"], False, id="repeat-not-adjacent"),
        pytest.param(["Moving", "Moving"], False, id="exact-repeat"),
        pytest.param(["Moving", " Moving "], False, id="repeat-with-surrounding-space"),
        pytest.param(["Straße", "STRASSE"], False, id="repeat-under-casefolding"),
        pytest.param(["Moving", "Moved"], True, id="different-reasons"),
        pytest.param(["Moving"], True, id="one-reason"),
        pytest.param([], False, id="empty-list"),
        pytest.param([""], False, id="empty-reason"),
    ],
)
def test_allowed_reasons_are_distinct_ignoring_case(reasons: list[str], valid: bool) -> None:
    if valid:
        assert CancelSettings(allowed_reasons=reasons).allowed_reasons == reasons
    else:
        with pytest.raises(ValidationError):
            CancelSettings(allowed_reasons=reasons)


@pytest.mark.parametrize(
    ("statuses", "valid"),
    [
        pytest.param(["canceled"], True, id="canceled-only"),
        pytest.param(["dispatched", "canceled"], True, id="dispatched-and-canceled"),
        pytest.param(list(AppointmentStatus), True, id="every-status"),
        pytest.param(["dispatched", "working", "done"], False, id="default-set-without-canceled"),
        pytest.param([], False, id="empty"),
        pytest.param(["done"], False, id="done-only"),
        pytest.param(["canceled", "closed"], False, id="unknown-status"),
    ],
)
def test_blocking_statuses_must_include_canceled(statuses: list[str], valid: bool) -> None:
    if valid:
        SettingsLayer(blocking_statuses=statuses)
    else:
        with pytest.raises(ValidationError):
            SettingsLayer(blocking_statuses=statuses)


def test_blocking_statuses_left_null_is_valid() -> None:
    assert SettingsLayer().blocking_statuses is None


@pytest.mark.parametrize(
    ("level", "key", "valid"),
    [
        pytest.param(BUSINESS, None, True, id="business-without-key"),
        pytest.param(BUSINESS, "plumbing", False, id="business-with-key"),
        *(pytest.param(level, "some-key", True, id=f"{level.value}-with-key") for level in PRECEDENCE[1:]),
        *(pytest.param(level, None, False, id=f"{level.value}-without-key") for level in PRECEDENCE[1:]),
        pytest.param(JOB_TYPE, "has space", False, id="key-must-be-a-slug"),
    ],
)
def test_settings_scope_key_rules(level: ScopeLevel, key: str | None, valid: bool) -> None:
    if valid:
        assert SettingsScope(level=level, key=key).key == key
    else:
        with pytest.raises(ValidationError):
            SettingsScope(level=level, key=key)


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: RescheduleSettings(min_notice_hours=-1), id="negative-notice"),
        pytest.param(lambda: RescheduleSettings(min_notice_hours=MAX_NOTICE_HOURS + 1), id="notice-too-long"),
        pytest.param(
            lambda: CancelSettings(min_notice_hours=MAX_NOTICE_HOURS + 1), id="cancel-notice-too-long"
        ),
        pytest.param(lambda: RescheduleSettings(min_lead_hours=-1), id="negative-lead"),
        pytest.param(lambda: RescheduleSettings(max_horizon_days=0), id="zero-horizon"),
        pytest.param(lambda: RescheduleSettings(max_horizon_days=MAX_HORIZON_DAYS + 1), id="horizon-too-far"),
        pytest.param(lambda: RescheduleSettings(max_customer_reschedules=-1), id="negative-limit"),
        pytest.param(lambda: RescheduleSettings(max_customer_reschedules=101), id="limit-too-high"),
        pytest.param(lambda: RescheduleSettings(confirmed="maybe"), id="unknown-permission"),
        pytest.param(lambda: CancelSettings(allowed_reasons=[f"r{i}" for i in range(51)]), id="51-reasons"),
        pytest.param(lambda: SettingsLayer(unknown_field=True), id="unknown-field"),
        pytest.param(lambda: SettingsLayer(reschedule={"min_notice": 3}), id="misspelt-nested-field"),
    ],
)
def test_out_of_range_or_unknown_settings_are_refused(build) -> None:
    with pytest.raises(ValidationError):
        build()


def test_valid_bounds_are_accepted() -> None:
    RescheduleSettings(min_notice_hours=MAX_NOTICE_HOURS, max_customer_reschedules=0)
    RescheduleSettings(max_customer_reschedules=100, max_horizon_days=1)
    CancelSettings(min_notice_hours=0, allowed_reasons=[f"r{i}" for i in range(50)])


@pytest.mark.parametrize(
    ("path", "limited", "lifted"),
    [
        ("reschedule.max_customer_reschedules", 2, "unlimited"),
        ("cancel.allowed_reasons", ["Moving"], "any"),
    ],
)
@pytest.mark.parametrize("level", [BUSINESS_UNIT, JOB_TYPE, PROJECT])
def test_a_more_specific_layer_can_lift_a_limit_the_business_set(
    path: str, limited: object, lifted: str, level: ScopeLevel
) -> None:
    """Null inherits, so lifting a limit needs its own word; the lifted value is what the rules read as
    'no limit' (None), and the decision can still name the level that lifted it."""
    effective = resolve(
        [scoped(BUSINESS, layer_setting(path, limited)), scoped(level, layer_setting(path, lifted))]
    )
    assert effective.get(path) is None
    assert effective.level_of(path) == level.value


@pytest.mark.parametrize(
    ("path", "lifted"),
    [("reschedule.max_customer_reschedules", "unlimited"), ("cancel.allowed_reasons", "any")],
)
def test_a_lift_survives_the_wire_and_a_less_specific_limit_returns_when_it_is_removed(
    path: str, lifted: str
) -> None:
    layer = SettingsLayer.model_validate_json(layer_setting(path, lifted).model_dump_json(), strict=True)
    assert resolve([scoped(PROJECT, layer)]).get(path) is None
    assert (
        resolve([scoped(BUSINESS, layer_setting(path, VALUES[path][0][0]))]).get(path) == VALUES[path][0][1]
    )


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: RescheduleSettings(max_customer_reschedules="none"), id="other-word-for-limit"),
        pytest.param(lambda: CancelSettings(allowed_reasons="all"), id="other-word-for-reasons"),
        pytest.param(lambda: CancelSettings(allowed_reasons=[]), id="empty-reason-list"),
    ],
)
def test_only_the_documented_words_lift_a_limit(build) -> None:
    with pytest.raises(ValidationError):
        build()
