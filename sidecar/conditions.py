"""Route conditions: which deliveries a route takes (event lists, `if`, `any`), and why it does not.

Compiled once at config load (`compile_rule`, errors and warnings located by yamldoc) into frozen,
hashable values; evaluated per delivery against the payload, the request's headers and its query
string. A value is a scalar (equal, types kept: `true` is not `1` nor `"true"`), a list of scalars
(equal to any), or a mapping with exactly one operator.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .yamldoc import Doc, Path_, _describe

MISSING: Any = object()  # no such field, header or query parameter
SCALARS = (str, int, float, bool, type(None))
NUMERIC = {"gt": "more than", "ge": "at least", "lt": "less than", "le": "at most"}
OPERATORS = ("regex", "glob", "in", "not", "exists", *NUMERIC)
HEADER, QUERY = "$header.", "$query."
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
# A plain string holding one of these is compared exactly; someone probably meant a pattern.
PATTERN_CHARS = re.compile(r"[*?\[^$]")
# Request headers never shown in a reason: they may carry credentials.
HIDDEN = re.compile(r"auth|cookie|signature|token|secret|key|hmac", re.IGNORECASE)
SHOWN_MAX = 80


@dataclass(frozen=True)
class Test:
    """One condition on one value: `op` (eq, any, regex, glob, not, exists, gt, ge, lt, le) and its operand."""

    op: str
    arg: Any

    def holds(self, value: Any) -> bool:
        if self.op == "not":
            return not self.arg.holds(value)
        if self.op == "exists":
            return (value is not MISSING) is self.arg
        if value is MISSING:
            return False
        if self.op == "eq":
            return equal(value, self.arg)
        if self.op == "any":
            return any(equal(value, want) for want in self.arg)
        if self.op == "regex":
            return isinstance(value, str) and self.arg.search(value) is not None
        if self.op == "glob":
            return isinstance(value, str) and fnmatch.fnmatchcase(value, self.arg)
        number = _number(value)
        if number is None:
            return False
        return {"gt": number > self.arg, "ge": number >= self.arg, "lt": number < self.arg,
                "le": number <= self.arg}[self.op]

    def wanted(self) -> str:
        """What this test asks for, in words (for reasons and `explain`)."""
        if self.op == "eq":
            return shown(self.arg)
        if self.op == "any":
            return "one of [" + ", ".join(shown(a) for a in self.arg) + "]"
        if self.op == "not":
            return "not " + self.arg.wanted()
        if self.op == "exists":
            return "present" if self.arg else "absent"
        if self.op == "regex":
            return f"a string matching regex {shown(self.arg.pattern)}"
        if self.op == "glob":
            return f"a string matching glob {shown(self.arg)}"
        return f"a number {NUMERIC[self.op]} {self.arg:g}"


@dataclass(frozen=True)
class Check:
    """A test on the value at `key`: a dotted payload path, `$header.Name` or `$query.name`."""

    key: str
    test: Test

    def value(self, request: Request) -> Any:
        """The value this check tests. Header and query values are text: a numeric test reads them as numbers."""
        value = request.value(self.key)
        if isinstance(value, str) and self.key.startswith((HEADER, QUERY)) and _compares_numbers(self.test):
            try:
                return float(value)
            except ValueError:
                return value
        return value

    def holds(self, request: Request) -> bool:
        return self.test.holds(self.value(request))


@dataclass(frozen=True)
class Rule:
    """A route's whole condition: its event is one of `events` ("*": any), every check of `checks` holds,
    and (when there are groups) every check of at least one group of `any_of` holds."""

    events: tuple[str, ...] = ("*",)
    checks: tuple[Check, ...] = ()
    any_of: tuple[tuple[Check, ...], ...] = ()


@dataclass(frozen=True)
class Miss:
    """Why a route does not take a delivery: the first check that failed and the value found."""

    key: str
    wanted: str
    found: str

    def __str__(self) -> str:
        return f"{self.key}: found {self.found}, wanted {self.wanted}"


class Request:
    """What conditions look at: the event type, the parsed payload, the headers and the query string."""

    def __init__(self, event: str, payload: Any, headers: Any, target: str = "") -> None:
        self.event, self.payload, self.headers, self.target = event, payload, headers, target

    @cached_property
    def query(self) -> dict[str, str]:
        """The query string's parameters, the first value of each (parsed only when a condition asks)."""
        out: dict[str, str] = {}
        for name, value in parse_qsl(urlsplit(self.target).query, keep_blank_values=True, max_num_fields=1000):
            out.setdefault(name, value)
        return out

    def value(self, key: str) -> Any:
        """The value a check's key names, or MISSING."""
        if key.startswith(HEADER):
            found = self.headers.get(key[len(HEADER):])
            return MISSING if found is None else str(found)
        if key.startswith(QUERY):
            return self.query.get(key[len(QUERY):], MISSING)
        return lookup(self.payload, key)


def lookup(payload: Any, dotted: str) -> Any:
    """The value at a dotted path ("repository.owner.login", "commits.0.id"), or MISSING."""
    value = payload
    for part in dotted.split("."):
        if isinstance(value, dict):
            value = value.get(part, MISSING)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
        if value is MISSING:
            return MISSING
    return value


def equal(actual: Any, expected: Any) -> bool:
    """Equality with types kept: JSON true is not YAML 1, nor "1" the number 1 (1 and 1.0 are equal)."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        return actual is expected
    if isinstance(actual, (int, float)) and isinstance(expected, (int, float)):
        return actual == expected
    return type(actual) is type(expected) and actual == expected


def _number(value: Any) -> float | None:
    """A number to compare: numbers only, never booleans."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _compares_numbers(test: Test) -> bool:
    return test.op in NUMERIC or (test.op == "not" and _compares_numbers(test.arg))


def shown(value: Any) -> str:
    """A value as JSON text, cut to SHOWN_MAX characters."""
    if value is MISSING:
        return "nothing"
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= SHOWN_MAX else text[:SHOWN_MAX - 3] + "..."


# --- evaluation ------------------------------------------------------------------------------------
def _checks_miss(checks: Iterable[Check], request: Request) -> tuple[int, Miss | None]:
    """(how many of `checks` hold, the first that does not)."""
    held, first = 0, None
    for check in checks:
        value = check.value(request)
        if check.test.holds(value):
            held += 1
        elif first is None:
            hide = check.key.startswith(HEADER) and HIDDEN.search(check.key) and value is not MISSING
            first = Miss(check.key, check.test.wanted(), "(hidden)" if hide else shown(value))
    return held, first


def event_holds(rule: Rule, event: str) -> bool:
    return "*" in rule.events or event in rule.events


def takes(rule: Rule, request: Request) -> bool:
    """Whether a route with this rule takes the delivery (stops at the first failing check)."""
    if not event_holds(rule, request.event):
        return False
    if not all(c.holds(request) for c in rule.checks):
        return False
    return not rule.any_of or any(all(c.holds(request) for c in group) for group in rule.any_of)


def verdict(rule: Rule, request: Request) -> tuple[int, Miss | None]:
    """(closeness, why not): None when the rule holds; closeness ranks near misses (event first, then
    the number of checks that hold)."""
    if not event_holds(rule, request.event):
        wanted = rule.events[0] if len(rule.events) == 1 else list(rule.events)
        return -1, Miss("event", "one of " + shown(wanted) if isinstance(wanted, list) else shown(wanted),
                        shown(request.event))
    held, miss = _checks_miss(rule.checks, request)
    if rule.any_of:
        groups = [_checks_miss(group, request) for group in rule.any_of]
        best = max(range(len(groups)), key=lambda i: groups[i][0])
        if all(m is not None for _, m in groups):
            group_miss = groups[best][1]
            assert group_miss is not None
            miss = miss or Miss(f"any[{best}].{group_miss.key}", group_miss.wanted, group_miss.found)
        held += groups[best][0]
    return held, miss


def select(routes: Iterable[Any], request: Request) -> tuple[list[Any], str]:
    """The routes (in table order) whose rule takes the delivery; when none, the reason: no route for
    the event, or the closest route's first failing condition and the value found."""
    routes = list(routes)
    taken = [r for r in routes if takes(rule_of(r), request)]
    if taken:
        return taken, ""
    scored = [(verdict(rule_of(r), request), r) for r in routes]
    near = [(held, miss, r) for (held, miss), r in scored if held >= 0]
    if not near:
        return [], f"no route for event {shown(request.event)}"
    _, miss, route = max(near, key=lambda t: t[0])
    return [], f"route {route.name}: {miss}"


# --- compiling from config.yaml -----------------------------------------------------------------------
def compile_rule(doc: Doc, path: Path_, raw: dict[str, Any]) -> Rule:
    """A route's `event`, `if` and `any` as a Rule; every problem is an error (or warning) in `doc`."""
    events = _events(doc, path, raw)
    when = doc.get(raw, path, "if", dict, {})
    checks = _checks(doc, path + ("if",), when)
    groups = doc.get(raw, path, "any", list, [])
    if "any" in raw and isinstance(raw["any"], list) and not groups:
        doc.error(path + ("any",), "needs at least one mapping of conditions")
    any_of = []
    for i, group in enumerate(groups):
        if not isinstance(group, dict) or not group:
            doc.error(path + ("any", i), f"must be a mapping of conditions, got {_describe(group)}")
            continue
        any_of.append(_checks(doc, path + ("any", i), group))
    return Rule(events, checks, tuple(any_of))


def _events(doc: Doc, path: Path_, raw: dict[str, Any]) -> tuple[str, ...]:
    value = doc.get(raw, path, "event", (str, list), None, required=True)
    items = [value] if isinstance(value, str) else value
    if items is None:
        return ("*",) if "event" not in raw else ()
    if not items or not all(isinstance(e, str) and e for e in items):
        doc.error(path + ("event",), "must be an event type or a non-empty list of them")
        return ()
    return tuple(dict.fromkeys(items))


def _checks(doc: Doc, path: Path_, conditions: Mapping[str, Any]) -> tuple[Check, ...]:
    out = []
    for key, value in conditions.items():
        if _key_problem(key):
            doc.error(path + (key,), _key_problem(key))
            continue
        test = _test(doc, path + (key,), value)
        if test is not None:
            out.append(Check(key, test))
    return tuple(out)


def _key_problem(key: str) -> str:
    if key.startswith((HEADER, QUERY)):
        name = key.split(".", 1)[1]
        if key.startswith(HEADER) and not TOKEN.fullmatch(name):
            return "must be $header.<a header name>, such as $header.User-Agent"
        return "" if name else "must be $query.<a parameter name>, such as $query.env"
    if key.startswith("$"):
        return "unknown source: conditions read the payload (a dotted path), $header.Name or $query.name"
    if not key or any(not part for part in key.split(".")):
        return "must be a dotted payload path such as 'repository.full_name'"
    return ""


def _test(doc: Doc, path: Path_, value: Any) -> Test | None:
    if isinstance(value, SCALARS):
        _pattern_warning(doc, path, value)
        return Test("eq", value)
    if isinstance(value, list):
        return _scalars(doc, path, value, "any")
    if not isinstance(value, dict) or len(value) != 1:
        doc.error(path, "must be a value, a list of values, or a mapping with one operator"
                        f" ({', '.join(OPERATORS)}), got {_describe(value) if value else 'an empty mapping'}")
        return None
    (op, arg), = value.items()
    where = path + (op,)
    if op == "regex":
        if not isinstance(arg, str):
            doc.error(where, f"must be a regular expression (a string), got {_describe(arg)}")
            return None
        try:
            return Test(op, re.compile(arg))
        except re.error as e:
            doc.error(where, f"invalid regular expression {arg!r}: {e}")
            return None
    if op == "glob":
        if not isinstance(arg, str):
            doc.error(where, f"must be a glob pattern (a string), got {_describe(arg)}")
            return None
        return Test(op, arg)
    return _other_operator(doc, where, op, arg)


def _other_operator(doc: Doc, where: Path_, op: str, arg: Any) -> Test | None:
    if op == "in":
        if not isinstance(arg, list):
            doc.error(where, f"must be a list of values, got {_describe(arg)}")
            return None
        return _scalars(doc, where, arg, "any")
    if op == "not":
        inner = _test(doc, where, arg)
        return Test(op, inner) if inner is not None else None
    if op == "exists":
        if not isinstance(arg, bool):
            doc.error(where, f"must be true or false, got {_describe(arg)}")
            return None
        return Test(op, arg)
    if op in NUMERIC:
        if isinstance(arg, bool) or not isinstance(arg, (int, float)):
            doc.error(where, f"must be a number, got {_describe(arg)}")
            return None
        return Test(op, arg)
    doc.error(where, f"unknown operator {op!r} (known: {', '.join(OPERATORS)})")
    return None


def _scalars(doc: Doc, path: Path_, items: list[Any], op: str) -> Test | None:
    if not items:
        doc.error(path, "an empty list never matches: give at least one value")
        return None
    bad = [i for i, item in enumerate(items) if not isinstance(item, SCALARS)]
    for i in bad:
        doc.error(path + (i,), f"must be a string, number, true, false or null, got {_describe(items[i])}")
    for i, item in enumerate(items):
        _pattern_warning(doc, path + (i,), item)
    return None if bad else Test(op, tuple(items))


def _pattern_warning(doc: Doc, path: Path_, value: Any) -> None:
    if isinstance(value, str) and PATTERN_CHARS.search(value):
        doc.warn(path, f"{value!r} is compared exactly, character for character; for a pattern write"
                       f" {{glob: {json.dumps(value)}}} or {{regex: {json.dumps(value)}}}")


def rule_of(route: Any) -> Rule:
    """A route's rule: compiled at load, or for a route built in code, its event and `when` equalities."""
    rule = route.rule
    if rule is None:
        rule = Rule((route.event,), tuple(Check(k, Test("eq", v)) for k, v in route.when))
    assert isinstance(rule, Rule)
    return rule
