"""jsonschema's draft 2020-12 validator with its cost bounded in advance, for a model's reply.

Nothing is retrieved (an empty `referencing` registry), patterns run on RE2 (no backtracking), uniqueItems, enum and
const compare hashed canonical forms instead of every pair, and each validation spends from a fixed budget that
is charged before the work it pays for: a reply too costly to check is refused, it never holds the event loop.
"""

from __future__ import annotations

import contextvars
import math
import time

import re2
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry
from referencing.exceptions import Unresolvable

# No resources and no retrieve function: nothing is ever fetched.
NOTHING_TO_RETRIEVE = Registry()

# The budget of one reply's validation, in units of about a microsecond of CPU (measured on the gateway's reference
# machine with the worst replies and schemas found: the report of issue 14 has the figures). Checking a keyword
# costs KEYWORD_COST, applying a subschema to a value (jsonschema's descend) DESCEND; error messages are paid by
# their length (they quote the value), patterns by the worst case of RE2, which is linear.
VALIDATION_BUDGET = 5_000
KEYWORD_COST = 2
# Off the event loop, the check hands the interpreter over every so many steps (about a millisecond's worth).
YIELD_EVERY = 2_000
DESCEND = 3
ERROR_LEVEL_COST = 1
# Keyword checks nested inside one another at once (the reply's depth times the schema's): three Python frames each,
# well below the interpreter's recursion limit with the request's own frames.
MAX_NESTING = 150
# Levels of a value that uniqueItems, enum or const compare (two frames each, on top of the keyword checks').
MAX_COMPARED_DEPTH = 50

# RE2's memory for one pattern, its program and its DFA's cache. Past it a pattern does not compile (at about 1,600
# instructions), which it finds out within a millisecond: with more, a pattern such as \p{L}{1000} takes ten.
PATTERN_MEMORY = 32 * 1024
# RE2 is linear in the text, but its worst case (the DFA thrashing its cache, or the NFA it falls back to) costs up to
# about 8 nanoseconds per byte of text and instruction of the program, measured with adversarial patterns and texts
# (more memory does not lower it). A search is charged this much before it runs.
PATTERN_NS_PER_BYTE_INSTRUCTION = 10


class TooCostly(Exception):
    """Validating the reply would spend more than the budget; nothing more was done."""


def pattern_program(pattern: str) -> int:
    """How many instructions RE2 compiles a pattern to; raises re2.error if RE2 cannot compile it."""
    return _compiled(pattern)[1]


def _compiled(pattern: str):
    known = _patterns.get(pattern)
    if known is None:
        options = re2.Options()
        options.max_mem = PATTERN_MEMORY
        options.never_capture = True  # only "does it match" is asked: no submatch to track
        options.log_errors = False
        compiled = re2.compile(pattern, options)
        if len(_patterns) >= MAX_PATTERNS_KEPT:
            _patterns.clear()
        known = _patterns[pattern] = (compiled, compiled.programsize)
    return known


# Compiled patterns, by their text (each holds at most PATTERN_MEMORY).
_patterns: dict[str, tuple] = {}
MAX_PATTERNS_KEPT = 256


def reply_error(schema: dict, instance, resolver, *, budget: int = VALIDATION_BUDGET,
                off_loop: bool = False) -> ValidationError | None:
    """The most relevant way the instance misses the schema, or None; raises TooCostly past the budget.

    `off_loop`: the check runs in a thread beside the event loop, and hands the interpreter over every YIELD_EVERY
    steps (see _Meter.spend).

    The schema must have passed output_schema's check, and `resolver` be its output_schema.schema_resolver(): it
    knows the schema's own resources and nothing else.
    """
    token = _METER.set(_Meter(budget, yields=off_loop))
    try:
        # Given its resolver, jsonschema neither builds one (which would mark the schema as not yet crawled, and
        # crawl it again on every lookup that misses) nor adds its default registry (which fetches URLs).
        validator = _Validator(schema, registry=NOTHING_TO_RETRIEVE, _resolver=resolver)
        return best_match(validator.iter_errors(instance))
    except Unresolvable as exc:
        # The check resolved every ref; a $dynamicRef's target may still depend on the path validation takes.
        raise TooCostly(f"the ref {exc.ref!r} did not resolve inside the schema") from None
    except RecursionError:
        raise TooCostly("its values and the schema's subschemas nest too deeply") from None
    finally:
        _METER.reset(token)


class _Meter:
    """What one validation may still spend, and how deep its keyword checks are nested right now."""

    __slots__ = ("budget", "left", "nesting", "enums", "consts", "next_yield")

    def __init__(self, budget: int, *, yields: bool = False):
        self.budget = self.left = budget
        self.next_yield = budget - YIELD_EVERY if yields else -math.inf
        self.nesting = 0
        # The canonical forms of the schema's enum and const values (by id: the schema outlives the validation),
        # built once per validation.
        self.enums, self.consts = {}, {}

    def spend(self, units: float):
        self.left -= units
        if self.left < 0:
            raise TooCostly(f"it would take more than the {self.budget:,} steps this reply may take")
        if self.left < self.next_yield:
            # Measured: without this, the event loop's thread waited for the GIL until a 600 KB check was over (half
            # a second, 1-3 ticks of a 2 ms timer), though plain jsonschema on the same reply lets it tick every 5 ms;
            # why the interpreter's own switching does not happen inside the metered checks was not established.
            # Sleeping 0 releases the GIL, and a thread that has asked for it for a switch interval takes it.
            self.next_yield -= YIELD_EVERY
            time.sleep(0)


_METER: contextvars.ContextVar[_Meter] = contextvars.ContextVar("schema_validation_meter")

# What a keyword costs beyond KEYWORD_COST: per item or property of the value it checks, per entry of its own
# value (subschemas, names), and once.
_COSTS = {
    "items": (DESCEND, 0, 0), "additionalProperties": (DESCEND, 0, 0), "propertyNames": (DESCEND, 0, 0),
    "contains": (DESCEND, 0, 0), "unevaluatedItems": (2 * DESCEND, 0, 4 * DESCEND),
    "unevaluatedProperties": (2 * DESCEND, 0, 0), "patternProperties": (0, 0, 0),
    "properties": (0, DESCEND, 0), "prefixItems": (0, DESCEND, 0), "dependentSchemas": (0, DESCEND, 0),
    "allOf": (0, DESCEND + 1, 0), "anyOf": (0, DESCEND + 1, 0), "oneOf": (0, DESCEND + 2, 0),
    "required": (0, 1, 0), "dependentRequired": (0, 1, 0),
    "not": (0, 0, DESCEND), "if": (0, 0, 2 * DESCEND), "$ref": (0, 0, DESCEND + 6), "$dynamicRef": (0, 0, DESCEND + 8),
}


def _metered(keyword: str, check):
    """A keyword check that pays before it runs, and for the error messages it writes (they quote the value)."""
    per_item, per_entry, once = _COSTS.get(keyword, (0, 0, 0))

    def metered(validator, value, instance, schema):
        meter = _METER.get()
        units = KEYWORD_COST + once
        if per_item and isinstance(instance, (dict, list)):
            units += per_item * len(instance)
        if per_entry and isinstance(value, (dict, list)):
            units += per_entry * len(value)
        meter.spend(units)
        meter.nesting += 1
        try:
            if meter.nesting > MAX_NESTING:
                raise TooCostly(f"its values and the schema's subschemas nest more than {MAX_NESTING} levels deep")
            for error in check(validator, value, instance, schema) or ():
                # Each level an error passes up costs jsonschema a few frames and bookkeeping; its message was
                # paid for once, where it was written.
                if getattr(error, "_metered", False):
                    meter.spend(ERROR_LEVEL_COST)
                else:
                    error._metered = True
                    meter.spend(ERROR_LEVEL_COST + len(error.message) / 100)
                yield error
        finally:
            meter.nesting -= 1

    return metered


def _search(pattern: str, text: str) -> bool:
    meter = _METER.get()
    if pattern not in _patterns:
        # Compiled when the schema was checked, and dropped since: about a microsecond a character, 0.1 ms a class.
        meter.spend(50 + len(pattern) + 100 * (pattern.count("\\p") + pattern.count("\\P")))
    compiled, instructions = _compiled(pattern)
    size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    meter.spend(3 + size * instructions * PATTERN_NS_PER_BYTE_INSTRUCTION / 1000)
    return compiled.search(text) is not None


def _canonical(value, meter: _Meter, depth: int = 0):
    """A hashable form equal for values jsonschema calls equal: 1 == 1.0, true != 1, objects in any key order."""
    meter.spend(1)
    if value is True or value is False:
        return ("bool", value)
    if isinstance(value, list):
        if depth > MAX_COMPARED_DEPTH:
            raise TooCostly(f"a value it compares nests more than {MAX_COMPARED_DEPTH} levels deep")
        return ("list", tuple(_canonical(item, meter, depth + 1) for item in value))
    if isinstance(value, dict):
        if depth > MAX_COMPARED_DEPTH:
            raise TooCostly(f"a value it compares nests more than {MAX_COMPARED_DEPTH} levels deep")
        return ("object", frozenset((key, _canonical(item, meter, depth + 1)) for key, item in value.items()))
    return value  # a string, a number or null: none equals a tuple or another kind


def _members(enums: list, meter: _Meter) -> set:
    members = meter.enums.get(id(enums))
    if members is None:
        members = meter.enums[id(enums)] = {_canonical(value, meter) for value in enums}
    return members


def _constant(const, meter: _Meter):
    if id(const) not in meter.consts:
        meter.consts[id(const)] = _canonical(const, meter)
    return meter.consts[id(const)]


# -- the keywords that differ from jsonschema's own -------------------------------------------------------------------


def _pattern(validator, pattern, instance, schema):
    if validator.is_type(instance, "string") and not _search(pattern, instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


def _pattern_properties(validator, pattern_properties, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    meter = _METER.get()
    for pattern, subschema in pattern_properties.items():
        for key, value in instance.items():
            if _search(pattern, key):
                meter.spend(DESCEND)
                yield from validator.descend(value, subschema, path=key, schema_path=pattern)


def _extra_properties(instance, schema):
    properties = schema.get("properties", {})
    patterns = schema.get("patternProperties", {})
    for key in instance:
        if key not in properties and not any(_search(pattern, key) for pattern in patterns):
            yield key


def _additional_properties(validator, additional, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    extras = set(_extra_properties(instance, schema))
    if validator.is_type(additional, "object"):
        for extra in extras:
            yield from validator.descend(instance[extra], additional, path=extra)
    elif not additional and extras:
        if "patternProperties" in schema:
            verb = "does" if len(extras) == 1 else "do"
            joined = ", ".join(repr(each) for each in sorted(extras))
            patterns = ", ".join(repr(each) for each in sorted(schema["patternProperties"]))
            yield ValidationError(f"{joined} {verb} not match any of the regexes: {patterns}")
        else:
            extras = sorted(extras, key=str)
            verb = "was" if len(extras) == 1 else "were"
            yield ValidationError(f"Additional properties are not allowed "
                                  f"({', '.join(repr(extra) for extra in extras)} {verb} unexpected)")


def _evaluated_keys(validator, instance, schema) -> set:
    """The instance's keys some keyword of the schema evaluates, as jsonschema finds them, with patterns on RE2."""
    if not isinstance(schema, dict):
        return set()
    meter = _METER.get()
    meter.spend(KEYWORD_COST + len(schema))
    keys = set()
    for keyword in ("$ref", "$dynamicRef"):
        if keyword in schema:
            resolved = validator._resolver.lookup(schema[keyword])
            keys |= _evaluated_keys(validator.evolve(schema=resolved.contents, _resolver=resolved.resolver),
                                    instance, resolved.contents)
    properties = schema.get("properties")
    if isinstance(properties, dict):
        keys |= properties.keys() & instance.keys()
    for keyword in ("additionalProperties", "unevaluatedProperties"):
        if (subschema := schema.get(keyword)) is not None:
            meter.spend(DESCEND * len(instance))
            keys |= {key for key, value in instance.items() if _valid(validator.descend(value, subschema))}
    for pattern in schema.get("patternProperties", {}):
        keys |= {key for key in instance if _search(pattern, key)}
    for key, subschema in schema.get("dependentSchemas", {}).items():
        if key in instance:
            keys |= _evaluated_keys(validator, instance, subschema)
    for keyword in ("allOf", "oneOf", "anyOf"):
        for subschema in schema.get(keyword, []):
            meter.spend(DESCEND)
            if _valid(validator.descend(instance, subschema)):
                keys |= _evaluated_keys(validator, instance, subschema)
    if "if" in schema:
        meter.spend(DESCEND)
        if validator.evolve(schema=schema["if"]).is_valid(instance):
            keys |= _evaluated_keys(validator, instance, schema["if"])
            if "then" in schema:
                keys |= _evaluated_keys(validator, instance, schema["then"])
        elif "else" in schema:
            keys |= _evaluated_keys(validator, instance, schema["else"])
    return keys


def _valid(errors) -> bool:
    return next(errors, None) is None


def _unevaluated_properties(validator, unevaluated, instance, schema):
    if not validator.is_type(instance, "object"):
        return
    evaluated = _evaluated_keys(validator, instance, schema)
    invalid = [key for key in instance if key not in evaluated
               and not _valid(validator.descend(instance[key], unevaluated, path=key, schema_path=key))]
    if invalid:
        verb = "was" if len(invalid) == 1 else "were"
        if unevaluated is False:
            shown = ", ".join(repr(key) for key in sorted(invalid, key=str))
            yield ValidationError(f"Unevaluated properties are not allowed ({shown} {verb} unexpected)")
        else:
            shown = ", ".join(repr(key) for key in invalid)
            yield ValidationError(f"Unevaluated properties are not valid under the given schema ({shown} {verb} "
                                  "unevaluated and invalid)")


def _unique_items(validator, unique, instance, schema):
    if not unique or not validator.is_type(instance, "array"):
        return
    meter, seen = _METER.get(), set()
    for item in instance:
        key = _canonical(item, meter)
        if key in seen:
            yield ValidationError(f"{instance!r} has non-unique elements")
            return
        seen.add(key)


def _enum(validator, enums, instance, schema):
    meter = _METER.get()
    if _canonical(instance, meter) not in _members(enums, meter):
        yield ValidationError(f"{instance!r} is not one of {enums!r}")


def _const(validator, const, instance, schema):
    meter = _METER.get()
    if _canonical(instance, meter) != _constant(const, meter):
        yield ValidationError(f"{const!r} was expected")


_OWN = {"pattern": _pattern, "patternProperties": _pattern_properties, "additionalProperties": _additional_properties,
        "unevaluatedProperties": _unevaluated_properties, "uniqueItems": _unique_items, "enum": _enum,
        "const": _const}

_Validator = validators.extend(
    Draft202012Validator,
    {keyword: _metered(keyword, _OWN.get(keyword, check)) for keyword, check in Draft202012Validator.VALIDATORS.items()},
)
