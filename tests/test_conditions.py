"""Route conditions without a server: compiling `event`/`if`/`any` from YAML (errors and warnings with
their line), the evaluator's semantics, and the reason a delivery is ignored."""

from __future__ import annotations

import textwrap
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar import config as config_mod
from sidecar.conditions import Request, Rule, compile_rule, rule_of, select, takes, verdict
from sidecar.config import Route
from sidecar.errors import ConfigError
from sidecar.yamldoc import Doc

from .support import SCRIPTS, table


def compiled(route_yaml: str) -> tuple[Rule, list[str], list[str]]:
    """A route's rule from its YAML (a mapping), with the errors and warnings found."""
    doc = Doc(Path("c.yaml"), textwrap.dedent(route_yaml))
    rule = compile_rule(doc, (), doc.data)
    return rule, [e for _, e in doc.errors], [w for _, w in doc.warnings]


def rule(route_yaml: str) -> Rule:
    found, errors, _ = compiled(route_yaml)
    assert not errors
    return found


def headers(**values: str) -> Message:
    m = Message()
    for k, v in values.items():
        m[k.replace("_", "-")] = v
    return m


def req(payload: Any, event: str = "push", target: str = "/webhook", **hdrs: str) -> Request:
    return Request(event, payload, headers(**hdrs), target)


PUSH = {"ref": "refs/heads/main", "repository": {"full_name": "acme/app", "private": False, "stars": 12},
        "head_commit": {"message": "fix [skip ci]"}, "commits": [{"id": "a1"}], "deleted": False, "n": None,
        "text_number": "12"}


@pytest.mark.parametrize(("condition", "holds"), [
    ("ref: refs/heads/main", True),
    ("ref: [refs/heads/dev, refs/heads/main]", True),
    ("ref: [refs/heads/dev, refs/heads/release]", False),
    ("ref: {regex: '^refs/heads/(main|release)$'}", True),
    ("ref: {regex: 'release'}", False),
    ("ref: {glob: 'refs/heads/*'}", True),
    ("ref: {glob: 'Refs/heads/*'}", False),  # case-sensitive
    ("ref: {in: [refs/heads/main]}", True),
    ("ref: {not: refs/heads/main}", False),
    ("head_commit.message: {not: {regex: '\\[skip ci\\]'}}", False),
    ("head_commit.message: {not: {glob: '*wip*'}}", True),
    ("repository.private: false", True),
    ("repository.private: 0", False),  # types kept: false is not 0
    ("repository.private: 'false'", False),
    ("repository.stars: 12", True),
    ("repository.stars: 12.0", True),
    ("repository.stars: '12'", False),
    ("repository.stars: {gt: 11}", True),
    ("repository.stars: {ge: 12.5}", False),
    ("repository.stars: {lt: 13}", True),
    ("repository.stars: {le: 11}", False),
    ("ref: {gt: 1}", False),  # numbers only: a string is not compared
    ("text_number: {gt: 1}", False),  # not even numeric text in the payload
    ("deleted: {gt: -1}", False),  # nor a boolean
    ("commits.0.id: a1", True),
    ("commits.1.id: {exists: false}", True),
    ("n: null", True),
    ("n: {exists: true}", True),  # null is present
    ("missing.path: {exists: true}", False),
    ("missing.path: null", False),  # absent is not null
    ("missing.path: {not: x}", True),
    ("$header.User-Agent: {glob: 'GitHub-Hookshot/*'}", True),
    ("$header.user-agent: GitHub-Hookshot/1", True),  # header names are case-insensitive
    ("$header.X-Absent: {exists: false}", True),
    ("$query.env: prod", True),
    ("$query.env: [staging, dev]", False),
    ("$query.n: {ge: 2}", True),  # header and query values are text: numeric text compares as a number
    ("$query.n: {not: {lt: 2}}", True),
    ("$query.env: {gt: 2}", False),
    ("$query.absent: {exists: true}", False),
])
def test_condition(condition: str, holds: bool) -> None:
    r = rule(f"event: push\nif:\n  {condition}\n")
    request = req(PUSH, target="/webhook?env=prod&n=3&env=dev", User_Agent="GitHub-Hookshot/1")
    assert takes(r, request) is holds
    assert (verdict(r, request)[1] is None) is holds


def test_event_lists_and_any_groups() -> None:
    r = rule("""
        event: [push, create]
        if: {ref: refs/heads/main}
        any:
          - {repository.private: true}
          - {repository.full_name: {regex: '^acme/'}, repository.stars: {gt: 100}}
          - {$header.X-Force: 'yes'}
    """)
    assert r.events == ("push", "create")
    assert not takes(r, req(PUSH))  # no group holds
    assert takes(r, req(PUSH, event="create", X_Force="yes"))
    assert not takes(r, req(PUSH, event="delete", X_Force="yes"))
    held, miss = verdict(r, req(PUSH))
    assert str(miss) == "any[1].repository.stars: found 12, wanted a number more than 100"
    assert held == 2  # ref, and the closest group's regex
    assert rule("event: '*'\n").events == ("*",) and takes(rule("event: '*'\n"), req({}, event="anything"))


def test_the_reason_names_the_closest_route_and_its_first_failing_condition() -> None:
    routes = [Route(name, "", (), ("true",), rule=rule(text)) for name, text in (
        ("issues", "event: issues\n"),
        ("one", "event: push\nif: {ref: refs/heads/dev, repository.private: true}\n"),
        ("two", "event: push\nif: {repository.private: false, ref: [refs/heads/a, refs/heads/b]}\n"),
    )]
    assert select(routes, req(PUSH)) == ([], 'route two: ref: found "refs/heads/main",'
                                             ' wanted one of ["refs/heads/a", "refs/heads/b"]')
    assert select(routes, req(PUSH, event="release")) == ([], 'no route for event "release"')
    assert select(routes, req(PUSH, event="issues")) == ([routes[0]], "")
    # A header that may hold a credential is never shown; a long value is cut.
    secretive = Route("s", "", (), ("true",), rule=rule("event: push\nif: {$header.X-Api-Token: abc}\n"))
    assert select([secretive], req(PUSH, X_Api_Token="hunter2"))[1] == 'route s: $header.X-Api-Token: found (hidden),' \
                                                                       ' wanted "abc"'
    long = Route("l", "", (), ("true",), rule=rule("event: push\nif: {v: x}\n"))
    assert len(select([long], req({"v": "y" * 500}))[1]) < 140


def test_a_route_built_in_code_matches_its_event_and_equalities() -> None:
    route = Route("r", "push", (("ref", "refs/heads/main"),), ("true",))
    assert takes(rule_of(route), req(PUSH))
    assert not takes(rule_of(route), req(PUSH, event="create"))


@pytest.mark.parametrize(("route_yaml", "error"), [
    ("event: push\nif: {ref: {regex: '(unclosed'}}\n",
     "c.yaml:2: if.ref.regex: invalid regular expression '(unclosed': missing ), unterminated subpattern at"
     " position 0"),
    ("event: push\nif: {ref: {regexp: x}}\n",
     "c.yaml:2: if.ref.regexp: unknown operator 'regexp' (known: regex, glob, in, not, exists, gt, ge, lt, le)"),
    ("event: push\nif: {ref: {glob: a, regex: b}}\n",
     "c.yaml:2: if.ref: must be a value, a list of values, or a mapping with one operator (regex, glob, in, not,"
     " exists, gt, ge, lt, le), got a mapping"),
    ("event: push\nif: {n: {gt: '3'}}\n", "c.yaml:2: if.n.gt: must be a number, got a string"),
    ("event: push\nif: {n: {exists: 1}}\n", "c.yaml:2: if.n.exists: must be true or false, got int 1"),
    ("event: push\nif: {n: {in: x}}\n", "c.yaml:2: if.n.in: must be a list of values, got a string"),
    ("event: push\nif: {n: []}\n", "c.yaml:2: if.n: an empty list never matches: give at least one value"),
    ("event: push\nif: {n: [a, [b]]}\n", "c.yaml:2: if.n[1]: must be a string, number, true, false or null,"
                                         " got a list"),
    ("event: push\nif: {n: {not: {regex: '['}}}\n",
     "c.yaml:2: if.n.not.regex: invalid regular expression '[': unterminated character set at position 0"),
    ("event: push\nif: {$env.HOME: x}\n", "c.yaml:2: if.$env.HOME: unknown source: conditions read the payload"
                                          " (a dotted path), $header.Name or $query.name"),
    ("event: push\nif: {'$header.Bad Name': x}\n",
     "c.yaml:2: if.$header.Bad Name: must be $header.<a header name>, such as $header.User-Agent"),
    ("event: push\nif: {a..b: x}\n", "c.yaml:2: if.a..b: must be a dotted payload path such as"
                                     " 'repository.full_name'"),
    ("event: []\n", "c.yaml:1: event: must be an event type or a non-empty list of them"),
    ("event: push\nany: []\n", "c.yaml:2: any: needs at least one mapping of conditions"),
    ("event: push\nany: [x]\n", "c.yaml:2: any[0]: must be a mapping of conditions, got a string"),
])
def test_invalid_conditions_are_errors_with_their_line(route_yaml: str, error: str) -> None:
    assert compiled(route_yaml)[1] == [error]


def test_pattern_looking_strings_are_warnings() -> None:
    _, errors, warnings = compiled("event: push\nif:\n  ref: refs/heads/release/*\n  b: [ok, '^x']\n  c: plain\n")
    assert not errors
    assert warnings == [
        "c.yaml:3: if.ref: warning: 'refs/heads/release/*' is compared exactly, character for character; for a"
        ' pattern write {glob: "refs/heads/release/*"} or {regex: "refs/heads/release/*"}',
        "c.yaml:4: if.b[1]: warning: '^x' is compared exactly, character for character; for a pattern write"
        ' {glob: "^x"} or {regex: "^x"}',
    ]


def test_config_errors_and_warnings_carry_the_file_and_line(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(table(f"""
        - event: [push, create]
          if: {{ref: refs/heads/*, $query.env: prod}}
          run: {SCRIPTS}/record.sh
    """))
    loaded = config_mod.load(config, environ={"WEBHOOK_SECRET": "s"})
    assert loaded.warnings == (f"{config}:7: endpoints[0].routes[0].if.ref: warning: 'refs/heads/*' is compared"
                               ' exactly, character for character; for a pattern write {glob: "refs/heads/*"} or'
                               ' {regex: "refs/heads/*"}',)
    route = loaded.endpoints["/webhook"].routes[0]
    assert route.event == "push,create" and hash(route)
    config.write_text(table(f"""
        - event: push
          if: {{ref: {{regex: '*'}}}}
          run: {SCRIPTS}/record.sh
    """))
    with pytest.raises(ConfigError) as e:
        config_mod.load(config, environ={"WEBHOOK_SECRET": "s"})
    assert e.value.errors == [f"{config}:7: endpoints[0].routes[0].if.ref.regex: invalid regular expression '*':"
                              " nothing to repeat at position 0"]


SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-3, 3), st.sampled_from(["a", "b", "1", "true", ""]))


@given(value=SCALAR, wanted=st.lists(SCALAR, min_size=1, max_size=4))
def test_a_list_is_any_of_its_scalars_and_not_negates(value: Any, wanted: list[Any]) -> None:
    import json

    one = [rule(f"event: e\nif: {{v: {json.dumps(w)}}}\n") for w in wanted]
    listed = rule(f"event: e\nif: {{v: {json.dumps(wanted)}}}\n")
    negated = rule(f"event: e\nif: {{v: {{not: {json.dumps(wanted)}}}}}\n")
    request = req({"v": value}, event="e")
    assert takes(listed, request) == any(takes(r, request) for r in one)
    assert takes(negated, request) != takes(listed, request)
    # Types kept: a value equals only a scalar of its own kind (numbers apart from booleans).
    for w, r in zip(wanted, one, strict=True):
        if takes(r, request):
            assert type(w) is type(value) or {type(w), type(value)} <= {int, float}


@given(payload=st.dictionaries(st.sampled_from(["a", "b", "c"]), SCALAR, max_size=3),
       event=st.sampled_from(["push", "create", "x"]))
def test_verdict_agrees_with_takes(payload: dict[str, Any], event: str) -> None:
    r = rule("""
        event: [push, create]
        if: {a: {exists: true}, b: {not: null}}
        any: [{c: {gt: 0}}, {c: {glob: 't*'}}, {a: true}]
    """)
    request = req(payload, event=event)
    held, miss = verdict(r, request)
    assert takes(r, request) == (miss is None)
    assert (held < 0) == (event == "x")


def test_the_reference_examples_load(tmp_path: Path) -> None:
    """Every YAML example of docs/conditions.md is a valid route table, with no warning."""
    import re

    from .support import ROOT

    blocks = re.findall(r"```yaml\n(.*?)```", (ROOT / "docs" / "conditions.md").read_text(), re.S)
    assert len(blocks) == 3
    routes = [textwrap.dedent(b) for b in blocks[1:]]
    full = blocks[0] + "".join(textwrap.indent(r, "      ") for r in routes)
    config = tmp_path / "config.yaml"
    config.write_text(full)
    loaded = config_mod.load(config, environ={}, offline=True)
    assert loaded.route_count == 6 and loaded.warnings == ()
