"""Output schemas, a consumer's (OpenAI's response_format, Ollama's format) or a template's: checked before they are
used, and the models' JSON replies validated against them.

A schema never makes the gateway open anything and never stalls it. Only refs to places inside the schema resolve
(an external one is refused, and so is a ref cycle); its size, depth, refs and the sizes it can demand are
bounded; its patterns must compile on RE2, which cannot backtrack; and a reply is validated within a fixed budget
(llm.bounded_validator), fixed before it starts and spent off the event loop when it is more than a few
milliseconds. Checking a schema takes a few milliseconds at most, and its verdict is remembered.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urljoin

import re2
from referencing import Anchor, Registry
from referencing.exceptions import NoSuchAnchor, PointerToNowhere, Unresolvable
from referencing.jsonschema import DRAFT202012, DynamicAnchor
from rpds import HashTrieMap

from llm import bounded_validator
from llm.bounded_validator import VALIDATION_BUDGET, TooCostly, pattern_program
from llm.errors import InvalidOutput

MAX_SCHEMA_BYTES = 64 * 1024  # as compact JSON, in UTF-8
MAX_SCHEMA_DEPTH = 32  # levels of objects and arrays
MAX_REFS = 256  # $ref and $dynamicRef
MAX_NAMES = 128  # $id (below the top), $anchor and $dynamicAnchor: what refs can name besides JSON pointers
# What minItems, minLength, minProperties and minContains may demand of a reply (and of the mock's).
MAX_MINIMUM = 10_000
# Subschemas applied to one value at once through refs, allOf, anyOf, oneOf, not, if/then/else and dependentSchemas
# (refs multiply them: a def whose two branches refer to a def whose two branches ... doubles at each step), and how
# deep such applications nest.
MAX_APPLIED = 256
MAX_APPLIED_DEPTH = 32
# Patterns (pattern, patternProperties), compiled by RE2 when the schema is checked, at up to a microsecond a
# character, and 0.1 ms for each Unicode property class such as \p{L}: how many distinct ones, their length and
# classes together, and the instructions of one (matching costs up to 10 ns a byte of text and instruction).
MAX_PATTERNS = 64
MAX_PATTERNS_LENGTH = 2_048
MAX_UNICODE_CLASSES = 8
MAX_PATTERN_INSTRUCTIONS = 1_500

DIALECT = "draft 2020-12"
SIMPLE_TYPES = {"array", "boolean", "integer", "null", "number", "object", "string"}
# Keywords whose value is a subschema, a non-empty array of subschemas or an object of them (definitions: the old
# name of $defs, which referencing still indexes). The same sets as referencing's for draft 2020-12.
SCHEMA_VALUED = {"additionalProperties", "contains", "contentSchema", "else", "if", "items", "not", "propertyNames",
                 "then", "unevaluatedItems", "unevaluatedProperties"}
SCHEMA_ARRAYS = {"allOf", "anyOf", "oneOf", "prefixItems"}
SCHEMA_OBJECTS = {"$defs", "definitions", "dependentSchemas", "patternProperties", "properties"}
# Applied to the value itself, not to its items or properties: how refs can go round without consuming anything.
APPLIED_IN_PLACE = {"allOf", "anyOf", "oneOf", "not", "if", "then", "else", "dependentSchemas"}
COUNTS = {"maxLength", "minLength", "maxItems", "minItems", "maxContains", "minContains", "maxProperties",
          "minProperties"}
MINIMUMS = {"minLength", "minItems", "minContains", "minProperties"}
NUMBERS = {"maximum", "minimum", "exclusiveMaximum", "exclusiveMinimum"}
STRINGS = {"format", "title", "description", "$comment", "contentEncoding", "contentMediaType", "$schema"}
BOOLEANS = {"uniqueItems", "deprecated", "readOnly", "writeOnly"}
# A fixed pattern without nested repetition: Python's engine runs it in linear time, faster than RE2's binding.
ANCHOR_NAME = re.compile(r"[A-Za-z_][-A-Za-z0-9._]*")


def schema_problem(schema) -> str | None:
    """Why an output schema cannot be used, naming where in it (a JSON path such as $.properties.tags), or None."""
    return _verdict(schema).problem


def schema_resolver(schema: dict):
    """A `referencing` resolver rooted at the schema that knows only the schema's own resources: it never fetches."""
    verdict = _verdict(schema)
    return _registry(schema, verdict).resolver(base_uri=verdict.root_uri)


# A reply is first checked on the event loop, within bounded_validator's VALIDATION_BUDGET (about 5 ms of CPU). One
# that needs more (a long reply, a costly schema) is checked again in the reply checker's thread with a budget that
# grows with its size, fixed before the check starts: REPLY_UNITS_PER_BYTE a byte, up to MAX_REPLY_BUDGET (about
# 2 s, a reply of megabytes). Meanwhile the event loop gets the interpreter back at every switch interval (5 ms),
# and one such check runs at a time per process: a flood of costly replies queues here, it does not multiply.
# Replies longer than INLINE_REPLY_BYTES go to the thread at once: parsing them alone costs milliseconds.
INLINE_REPLY_BYTES = 16 * 1024
REPLY_UNITS_PER_BYTE = 20
MAX_REPLY_BUDGET = 2_000_000

_checker: ThreadPoolExecutor | None = None


class CostlierThanInline(Exception):
    """The reply needs more than the inline budget, and may have more in the checker's thread."""


def reply_budget(content: str) -> int:
    """The most a reply's check may spend off the event loop: more for a longer reply, within MAX_REPLY_BUDGET."""
    return min(MAX_REPLY_BUDGET, max(VALIDATION_BUDGET, REPLY_UNITS_PER_BYTE * len(content)))


async def checked_output(content: str, mode: str, schema: dict | None):
    """read_output() without holding the event loop: inline when cheap, else in the reply checker's thread."""
    if mode == "text":
        return content
    if len(content) <= INLINE_REPLY_BYTES:
        try:
            return read_output(content, mode, schema)
        except CostlierThanInline:
            pass
    global _checker
    if _checker is None:
        _checker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reply-check")
    check = functools.partial(read_output, content, mode, schema, budget=reply_budget(content))
    return await asyncio.get_running_loop().run_in_executor(_checker, check)


def read_output(content: str, mode: str, schema: dict | None, *, budget: int | None = None):
    """The reply as the client receives it: text as is, JSON mode an object valid against the schema.

    Raises InvalidOutput saying what is wrong with the reply. Without a `budget`, the check is the event loop's
    (VALIDATION_BUDGET), and a reply that needs more raises CostlierThanInline; see checked_output().
    """
    if mode == "text":
        return content
    try:
        output = json.loads(content)
    except (ValueError, RecursionError):
        output = None
    if not isinstance(output, dict):
        raise InvalidOutput("The model's reply is not a JSON object (json mode); the raw reply is in the audit log.")
    if schema:
        verdict = _verdict(schema)
        if verdict.problem:
            # A template saved before these checks existed may hold a schema they refuse: it is never used.
            raise InvalidOutput(f"The output schema cannot be used, so the reply was not checked: {verdict.problem} "
                                "The raw reply is in the audit log.")
        try:
            resolver = _registry(schema, verdict).resolver(base_uri=verdict.root_uri)
            error = bounded_validator.reply_error(schema, output, resolver, budget=budget or VALIDATION_BUDGET,
                                                  off_loop=budget is not None)
        except TooCostly as exc:
            if budget is None and reply_budget(content) > VALIDATION_BUDGET:
                raise CostlierThanInline() from None
            raise InvalidOutput(f"The model's reply could not be checked against the output schema: {exc}. "
                                "The raw reply is in the audit log.") from None
        if error is not None:
            raise InvalidOutput(
                f"The model's reply does not match the output schema: {_short(error)} "
                f"at {error.json_path}. The raw reply is in the audit log."
            )
    return output


def _short(error, limit: int = 300) -> str:
    """The validation message with a long offending value cut short: the full reply is in the audit log."""
    text = error.message
    if len(text) > 60:
        shown = repr(error.instance)
        if len(shown) > 60:
            text = text.replace(shown, shown[:50] + "…")
    return text if len(text) <= limit else text[:limit] + "…"


# -- verdicts ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Verdict:
    """What the check found: the problem, or where the schema's embedded resources ($id) and anchors are."""

    problem: str | None
    root_uri: str = ""
    resources: tuple = ()  # (uri, path of the subschema)
    anchors: tuple = ()  # (uri of its resource, name, dynamic, path of the subschema)


# Verdicts by the digest of the schema's compact JSON: a client sends the same schema with every request.
_verdicts: dict[bytes, _Verdict] = {}
MAX_VERDICTS = 1024


def _verdict(schema) -> _Verdict:
    if not isinstance(schema, dict):
        return _Verdict("The output schema must be a JSON object.")
    try:
        # Escapes only lengthen the text: under the limit in ASCII, it is under the limit in UTF-8.
        text = json.dumps(schema, separators=(",", ":"), allow_nan=False)
        if len(text) > MAX_SCHEMA_BYTES:
            size = len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass"))
            if size > MAX_SCHEMA_BYTES:
                return _Verdict(f"The output schema is {size:,} bytes as compact JSON; the limit is "
                                f"{MAX_SCHEMA_BYTES:,} bytes ({MAX_SCHEMA_BYTES // 1024} KiB).")
    except RecursionError:
        return _Verdict(f"The output schema is nested more than {MAX_SCHEMA_DEPTH} levels deep.")
    except (TypeError, ValueError) as exc:
        return _Verdict(f"The output schema is not plain JSON: {exc}.")
    key = hashlib.sha256(text.encode()).digest()
    verdict = _verdicts.get(key)
    if verdict is None:
        if len(_verdicts) >= MAX_VERDICTS:
            _verdicts.clear()
        verdict = _verdicts[key] = _SchemaCheck(schema).verdict()
    return verdict


def _registry(schema: dict, verdict: _Verdict) -> Registry:
    """The schema's resources and anchors as the check found them: referencing would crawl every subschema to find
    them (tens of microseconds each, and again after every lookup that misses)."""
    root = DRAFT202012.create_resource(schema)
    resources = {verdict.root_uri: root}
    anchors = {}
    for uri, path in verdict.resources:
        resources[uri] = DRAFT202012.create_resource(_at(schema, path))
    for uri, name, dynamic, path in verdict.anchors:
        kind = DynamicAnchor if dynamic else Anchor
        anchors[(uri, name)] = kind(name=name, resource=DRAFT202012.create_resource(_at(schema, path)))
    # Nothing uncrawled and no retrieve function: a ref to anything else is Unresolvable, never fetched.
    return Registry(resources=resources, anchors=HashTrieMap(anchors))


def _at(schema, path):
    for segment in path:
        schema = schema[segment]
    return schema


# -- the check --------------------------------------------------------------------------------------------------------


class _Refused(Exception):
    """The first problem found: the check stops there."""


class _SchemaCheck:
    """One pass over a schema's keywords (their values, the bounds, the patterns), then over its refs and what they
    apply where. Keywords draft 2020-12 does not define are annotations, neither checked nor followed (as by
    jsonschema): a ref may not point into them."""

    def __init__(self, schema: dict):
        self.root = schema
        self.root_uri = ""
        self.paths: dict[int, tuple] = {}  # id(subschema) -> its path
        self.refs: list[tuple] = []  # (path, keyword, ref, base URI, id of the subschema holding it)
        self.applied: dict[int, list[tuple]] = {}  # id(subschema) -> (id, path, what) of those it applies in place
        self.resources: dict[str, tuple] = {}  # uri -> path, of subschemas with an $id
        self.anchors: dict[tuple, tuple] = {}  # (uri, name) -> (dynamic, path)
        self.patterns: set[str] = set()
        self.patterns_length = self.unicode_classes = self.names = 0

    def verdict(self) -> _Verdict:
        try:
            self._walk()
            self._resolve_refs()
            self._bound_applications()
        except _Refused as exc:
            return _Verdict(str(exc))
        if self.root.get("type") != "object":
            # JSON mode answers with an object; a schema for anything else could never be satisfied.
            return _Verdict('The output schema must describe an object: set "type": "object".')
        return self._layout(problem=None)

    def _layout(self, problem):
        return _Verdict(problem, self.root_uri, tuple(self.resources.items()),
                        tuple((uri, name, dynamic, path) for (uri, name), (dynamic, path) in self.anchors.items()))

    # -- the keywords -----------------------------------------------------------------------------------------------

    def _walk(self):
        if "$id" in self.root:
            self.root_uri = self._id_of(self.root, ())
        stack = [(self.root, (), self.root_uri)]
        while stack:
            schema, path, base = stack.pop()
            if not isinstance(schema, dict):
                continue  # true or false
            if len(path) >= MAX_SCHEMA_DEPTH:
                self._too_deep(path)
            if path and "$id" in schema:
                base = self._id_of(schema, path, base)
            self.paths[id(schema)] = path
            for keyword, value in schema.items():
                if len(path) + 2 > MAX_SCHEMA_DEPTH and isinstance(value, (dict, list)):
                    self._too_deep((*path, keyword))
                if keyword in SCHEMA_VALUED:
                    at = (*path, keyword)
                    if not isinstance(value, (dict, bool)):
                        self._invalid(at, f"{keyword} must be a schema (an object or a boolean)")
                    stack.append((value, at, base))
                    if keyword in APPLIED_IN_PLACE:
                        self._applies(schema, value, at, keyword)
                elif keyword in SCHEMA_ARRAYS:
                    at = (*path, keyword)
                    if not isinstance(value, list) or not value:
                        self._invalid(at, f"{keyword} must be a non-empty array of schemas")
                    for index, item in enumerate(value):
                        if not isinstance(item, (dict, bool)):
                            self._invalid((*at, index), f"{keyword} must hold schemas (objects or booleans)")
                        stack.append((item, (*at, index), base))
                        if keyword in APPLIED_IN_PLACE:
                            self._applies(schema, item, (*at, index), keyword)
                elif keyword in SCHEMA_OBJECTS:
                    at = (*path, keyword)
                    if not isinstance(value, dict):
                        self._invalid(at, f"{keyword} must be an object of schemas")
                    for name, item in value.items():
                        if not isinstance(item, (dict, bool)):
                            self._invalid((*at, name), f"the values of {keyword} must be schemas")
                        if keyword == "patternProperties":
                            self._check_pattern(name, at, "patternProperties")
                        stack.append((item, (*at, name), base))
                        if keyword in APPLIED_IN_PLACE:
                            self._applies(schema, item, (*at, name), keyword)
                elif keyword == "$ref" or keyword == "$dynamicRef":
                    at = (*path, keyword)
                    if not isinstance(value, str):
                        self._invalid(at, f"{keyword} must be a string")
                    if len(self.refs) >= MAX_REFS:
                        raise _Refused(f"The output schema has more than {MAX_REFS} refs ($ref and $dynamicRef); "
                                       f"the one past the limit is at {_path(at)}.")
                    self.refs.append((at, keyword, value, base, id(schema)))
                else:
                    self._check_value(keyword, value, path)
                    if keyword == "$anchor" or keyword == "$dynamicAnchor":
                        self._anchor(value, base, keyword == "$dynamicAnchor", path)

    def _check_value(self, keyword, value, path):
        if isinstance(value, (dict, list)) and _deeper_than(value, MAX_SCHEMA_DEPTH - len(path) - 1):
            self._too_deep((*path, keyword))
        if keyword in COUNTS:
            if not _is_integer(value) or value < 0:
                self._invalid((*path, keyword), f"{keyword} must be a non-negative integer, not {_shown(value)}")
            if keyword in MINIMUMS and value > MAX_MINIMUM:
                raise _Refused(f"{keyword} at {_path((*path, keyword))} is {value:,}; the gateway allows at most "
                               f"{MAX_MINIMUM:,}.")
        elif keyword in NUMBERS:
            if not _is_number(value):
                self._invalid((*path, keyword), f"{keyword} must be a number, not {_shown(value)}")
        elif keyword == "type":
            names = value if isinstance(value, list) else [value]
            if (not names or not all(isinstance(name, str) and name in SIMPLE_TYPES for name in names)
                    or len(set(names)) != len(names)):
                self._invalid((*path, keyword), f"type must be one of {', '.join(sorted(SIMPLE_TYPES))} or an array "
                                                f"of distinct ones, not {_shown(value)}")
        elif keyword in STRINGS:
            if not isinstance(value, str):
                self._invalid((*path, keyword), f"{keyword} must be a string, not {_shown(value)}")
            if keyword == "$schema" and path:
                # referencing would read such a subschema by that draft's rules, and jsonschema by 2020-12's.
                raise _Refused(f"$schema at {_path((*path, keyword))} is only allowed at the top of the output "
                               "schema.")
        elif keyword in BOOLEANS:
            if not isinstance(value, bool):
                self._invalid((*path, keyword), f"{keyword} must be true or false, not {_shown(value)}")
        elif keyword == "required":
            self._check_names(value, (*path, keyword), keyword)
        elif keyword == "pattern":
            if not isinstance(value, str):
                self._invalid((*path, keyword), f"pattern must be a string, not {_shown(value)}")
            self._check_pattern(value, (*path, keyword), "pattern")
        elif keyword == "enum" or keyword == "examples":
            if not isinstance(value, list):
                self._invalid((*path, keyword), f"{keyword} must be an array")
        elif keyword == "multipleOf":
            if not _is_number(value) or value <= 0:
                self._invalid((*path, keyword), f"multipleOf must be a number above 0, not {_shown(value)}")
        elif keyword == "dependentRequired":
            if not isinstance(value, dict):
                self._invalid((*path, keyword), "dependentRequired must be an object of arrays of property names")
            for name, names in value.items():
                self._check_names(names, (*path, keyword, name), keyword)
        elif keyword == "$anchor" or keyword == "$dynamicAnchor":
            if not isinstance(value, str) or not ANCHOR_NAME.fullmatch(value):
                self._invalid((*path, keyword), f"{keyword} must be a name such as node (a letter or _, then "
                                                f"letters, digits, -, _ or .), not {_shown(value)}")
        elif keyword == "$vocabulary":
            if not isinstance(value, dict) or not all(isinstance(v, bool) for v in value.values()):
                self._invalid((*path, keyword), "$vocabulary must be an object of booleans")

    def _id_of(self, schema, path, base: str = "") -> str:
        """The URI the subschema's $id gives it (and its refs' base), as referencing computes it."""
        value, at = schema["$id"], (*path, "$id")
        if not isinstance(value, str) or ("#" in value and not value.endswith("#")) or value.count("#") > 1:
            self._invalid(at, f"$id must be a URI without a fragment, not {_shown(value)}")
        try:
            uri = urljoin(base, DRAFT202012.create_resource(schema).id())
        except ValueError:
            self._invalid(at, f"$id must be a URI, not {_shown(value)}")
        if path:
            self._named(at)
            if uri in self.resources or uri == self.root_uri:
                raise _Refused(f"The $id {_shown(value)} at {_path(at)} names a resource that another $id in the "
                               "output schema already names.")
            self.resources[uri] = path
        return uri

    def _named(self, at):
        self.names += 1
        if self.names > MAX_NAMES:
            raise _Refused(f"The output schema has more than {MAX_NAMES} $id, $anchor and $dynamicAnchor keywords; "
                           f"the one past the limit is at {_path(at)}.")

    def _anchor(self, name: str, base: str, dynamic: bool, path):
        self._named((*path, "$dynamicAnchor" if dynamic else "$anchor"))
        if (base, name) in self.anchors:
            raise _Refused(f"The anchor {_shown(name)} at {_path(path)} is already defined at "
                           f"{_path(self.anchors[(base, name)][1])} in the same resource.")
        self.anchors[(base, name)] = (dynamic, path)

    def _applies(self, schema, subschema, at, keyword):
        if isinstance(subschema, dict):
            self.applied.setdefault(id(schema), []).append((id(subschema), at, keyword))

    def _check_names(self, value, at, keyword):
        if not isinstance(value, list) or not all(isinstance(name, str) for name in value) \
                or len(set(value)) != len(value):
            self._invalid(at, f"{keyword} must be an array of distinct property names")

    def _check_pattern(self, pattern: str, at, keyword: str):
        if pattern in self.patterns:
            return
        if len(self.patterns) >= MAX_PATTERNS:
            raise _Refused(f"The output schema has more than {MAX_PATTERNS} distinct patterns; the one past the "
                           f"limit is at {_path(at)}.")
        self.patterns.add(pattern)
        where = f"{keyword} {_shown(pattern)} at {_path(at)}"
        self.patterns_length += len(pattern)
        if self.patterns_length > MAX_PATTERNS_LENGTH:
            raise _Refused(f"The output schema's patterns are longer than {MAX_PATTERNS_LENGTH:,} characters "
                           f"together; the {where} goes past the limit.")
        self.unicode_classes += pattern.count("\\p") + pattern.count("\\P")
        if self.unicode_classes > MAX_UNICODE_CLASSES:
            raise _Refused(f"The output schema's patterns use more than {MAX_UNICODE_CLASSES} Unicode property "
                           f"classes (\\p{{…}}, \\P{{…}}) together; the {where} goes past the limit.")
        try:
            instructions = pattern_program(pattern)
        except re2.error as exc:
            reason = exc.args[0] if exc.args else exc
            reason = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
            if "too large" in reason:
                raise _Refused(f"The {where} is too complex: RE2 would compile it to more than "
                               f"{MAX_PATTERN_INSTRUCTIONS:,} instructions.") from None
            raise _Refused(f"The {where} is not a regular expression RE2 accepts ({reason}). The gateway matches "
                           "patterns with RE2, which never backtracks: lookarounds and backreferences are not "
                           "supported.") from None
        if instructions > MAX_PATTERN_INSTRUCTIONS:
            raise _Refused(f"The {where} is too complex: RE2 compiles it to {instructions:,} instructions, and the "
                           f"limit is {MAX_PATTERN_INSTRUCTIONS:,} (a long counted repetition such as .{{500}} takes "
                           "many; minLength and maxLength bound a length).")

    def _invalid(self, at, what: str):
        raise _Refused(f"Not a valid JSON Schema ({DIALECT}): {what}, at {_path(at)}.")

    def _too_deep(self, at):
        raise _Refused(f"The output schema is nested more than {MAX_SCHEMA_DEPTH} levels deep (at {_path(at)}).")

    # -- the refs ---------------------------------------------------------------------------------------------------

    def _resolve_refs(self):
        registry = _registry(self.root, self._layout(None))
        dynamic_anchors = {}
        for (_, name), (dynamic, path) in self.anchors.items():
            if dynamic:
                dynamic_anchors.setdefault(name, []).append(id(_at(self.root, path)))
        for at, keyword, ref, base, holder in self.refs:
            where = f"{keyword} {_shown(ref)} at {_path(at)}"
            try:
                target = registry.resolver(base_uri=base).lookup(ref).contents
            except (PointerToNowhere, NoSuchAnchor):
                raise _Refused(f"The {where} points to nothing in the output schema.") from None
            except Unresolvable:
                absolute = _joined(base, ref)
                resolved = f" (resolved against $id: {_shown(absolute)})" if absolute != ref else ""
                raise _Refused(f"The {where} refers outside the output schema{resolved}. Only refs to places inside "
                               "the schema are followed; nothing is ever fetched.") from None
            except Exception:  # noqa: BLE001 - referencing raises ValueError and others on malformed pointers
                raise _Refused(f"The {where} points to nothing in the output schema.") from None
            if isinstance(target, bool):
                continue
            if id(target) not in self.paths:
                raise _Refused(f"The {where} points to a value that is not a subschema (a ref must point to a "
                               "schema, such as one under $defs).")
            edges = self.applied.setdefault(holder, [])
            edges.append((id(target), at, f"{keyword} {_shown(ref)}"))
            if keyword == "$dynamicRef" and ref.startswith("#") and "/" not in ref:
                # Which $dynamicAnchor answers depends on the path validation took: any one of that name may.
                edges.extend((anchor, at, f"{keyword} {_shown(ref)}") for anchor in dynamic_anchors.get(ref[1:], ()))

    def _bound_applications(self):
        """Refuse ref cycles that apply a schema to the same value forever, and refs that multiply subschemas."""
        counts, depths = {}, {}  # id -> subschemas it applies to one value (itself included), and how deep
        for start in self.applied:
            if start in counts:
                continue
            stack, on_path = [(start, iter(self.applied[start]))], {start}
            while stack:
                node, edges = stack[-1]
                edge = next(edges, None)
                if edge is None:
                    stack.pop()
                    on_path.discard(node)
                    children = [child for child, _, _ in self.applied.get(node, ())]
                    counts[node] = min(MAX_APPLIED + 1, 1 + sum(counts.get(child, 1) for child in children))
                    depths[node] = 1 + max((depths.get(child, 1) for child in children), default=0)
                    if counts[node] > MAX_APPLIED:
                        raise _Refused(f"The subschema at {_path(self.paths[node])} applies more than {MAX_APPLIED} "
                                       "subschemas to one value through refs, allOf, anyOf, oneOf, not, "
                                       "if/then/else and dependentSchemas.")
                    if depths[node] > MAX_APPLIED_DEPTH:
                        raise _Refused(f"The subschema at {_path(self.paths[node])} nests refs and in-place "
                                       f"subschemas more than {MAX_APPLIED_DEPTH} deep.")
                    continue
                child, at, what = edge
                if child in on_path:
                    raise _Refused(f"The {what} at {_path(at)} leads back to {_path(self.paths[child])} without "
                                   "reaching into the value: a ref cycle that never ends. A ref to an enclosing "
                                   "schema must go through properties, items or the like.")
                if child not in counts and child in self.applied:
                    stack.append((child, iter(self.applied[child])))
                    on_path.add(child)


def _path(segments) -> str:
    """A JSON path in the style of jsonschema's errors: $.properties.tags.items, $.allOf[0]."""
    return "$" + "".join(f"[{segment}]" if isinstance(segment, int) else f".{segment}" for segment in segments)


def _shown(value) -> str:
    shown = repr(value)
    return shown if len(shown) <= 100 else shown[:99] + "…"


def _joined(base: str, ref: str) -> str:
    try:
        return urljoin(base, ref)
    except ValueError:
        return ref


def _deeper_than(value, levels: int) -> bool:
    """Whether a value nests objects and arrays more than `levels` deep, counted without recursion."""
    level, depth = [value], 1
    while level:
        if depth > levels:
            return True
        below = []
        for item in level:
            for child in item.values() if item.__class__ is dict else item:
                if child.__class__ is dict or child.__class__ is list:
                    below.append(child)
        level, depth = below, depth + 1
    return False


def _is_integer(value) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float)
                                                                          and value.is_integer())


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
