"""A YAML document composed into plain values that remember their lines.

PyYAML's safe_load silently keeps the last of duplicated keys and gives no line
numbers, so the file is composed into nodes and walked here: duplicates are
errors, and each value remembers the line it came from. config.py checks the
meaning; this module only reads, types and locates.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

Path_ = tuple[str | int, ...]


def _key_path(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


# The parser's words for the mistakes people make, and what to do about them.
_PLAIN = (
    ("mapping values are not allowed here", "a ': ' where a value was expected: quote a value that holds ': ',"
                                            " or check the indentation of this key"),
    ("found character '\\t'", "a tab: YAML is indented with spaces only"),
    ("could not find expected ':'", "a key without ':' after it, or a line indented wrongly"),
    ("did not find expected key", "this line's indentation does not match the keys above it"),
    ("expected <block end>", "this line's indentation does not match the keys above it"),
    ("expected ',' or ']'", "a '[' list that is not closed with ']'"),
    ("expected ',' or '}'", "a '{' mapping that is not closed with '}'"),
    ("found unexpected end of stream", "a quote that is not closed"),
    ("expected the node content, but found '<stream end>'",
     "the file ends where a value was expected (an unclosed '[' or '{', or a key with nothing after it)"),
    ("found undefined alias", "a '*name' alias with no '&name' anchor before it"),
    ("while scanning a quoted scalar", "a quote that is not closed"),
)


def plain_yaml_problem(problem: str) -> str:
    """The parser's message in plain words (with the parser's own, for searching), or as it is."""
    for words, plain in _PLAIN:
        if words in problem:
            return f"{plain} (YAML: {problem})"
    return f"YAML: {problem}"


class Doc:
    """A composed YAML document: plain values plus the line of every key path."""

    def __init__(self, file: Path, text: str) -> None:
        self.file = file
        self.lines: dict[Path_, int] = {}
        self.errors: list[tuple[int, str]] = []
        self.warnings: list[tuple[int, str]] = []  # what `check` prints: valid, but probably not meant
        self._construct = yaml.constructor.SafeConstructor()
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
            problem = getattr(e, "problem", None) or str(e)
            self.errors.append((line, f"{file}:{line}: (yaml): column {column}: {plain_yaml_problem(problem)}"))
            self.data: Any = None
            return
        self.data = self._walk(node, ()) if node is not None else None

    def _walk(self, node: yaml.Node, path: Path_) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._construct.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
                if not isinstance(key, str):
                    self.error(path, f"keys must be strings, got {key_node.value!r}", key_node.start_mark.line + 1)
                    continue
                if key in out:
                    self.error(path + (key,), "duplicate key", key_node.start_mark.line + 1)
                    continue
                out[key] = self._walk(value_node, path + (key,))
                self.lines[path + (key,)] = key_node.start_mark.line + 1
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._walk(item, path + (i,)) for i, item in enumerate(node.value)]
        return self._construct.construct_object(node, deep=True)

    def line(self, path: Path_) -> int:
        while path not in self.lines and path:
            path = path[:-1]
        return self.lines.get(path, 1)

    def error(self, path: Path_, message: str, line: int | None = None) -> None:
        line = line or self.line(path)
        self.errors.append((line, f"{self.file}:{line}: {_key_path(path)}: {message}"))

    def warn(self, path: Path_, message: str) -> None:
        line = self.line(path)
        self.warnings.append((line, f"{self.file}:{line}: {_key_path(path)}: warning: {message}"))

    # Offline (`check --offline`, a chart's rendered ConfigMap): what only this machine's files and
    # environment can tell (a secret's value, a script's presence) is not checked.
    offline = False

    def local_error(self, path: Path_, message: str) -> None:
        """An error about this machine's files or environment: not one when checking offline."""
        if not self.offline:
            self.error(path, message)

    # Typed getters: each reports a wrong type and returns the default.
    def get(self, obj: Mapping[str, Any], path: Path_, key: str, kind: type | tuple[type, ...],
            default: Any = None, *, required: bool = False, minimum: float | None = None) -> Any:
        if key not in obj:
            if required:
                self.error(path, f"missing required key {key!r}")
            return default
        value = obj[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python, and YAML 1.1 turns on/off/yes/no into bools.
        if isinstance(value, bool) and bool not in kinds:
            self.error(path + (key,),
                       f"must be {_kind_name(kinds)}, got boolean {value!r} (quote it if you meant a string)")
            return default
        if float in kinds and isinstance(value, int):
            value = float(value)
        if not isinstance(value, kinds):
            self.error(path + (key,), f"must be {_kind_name(kinds)}, got {_describe(value)}")
            return default
        if minimum is not None and isinstance(value, (int, float)) and value < minimum:
            self.error(path + (key,), f"must be at least {minimum:g}, got {value}")
            return default
        return value

    def unknown_keys(self, obj: Mapping[str, Any], path: Path_, allowed: set[str]) -> None:
        for key in obj:
            if key not in allowed:
                self.error(path + (key,), f"unknown key (expected one of: {', '.join(sorted(allowed))})")


def _kind_name(kinds: tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
             list: "a list", dict: "a mapping"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _describe(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "nothing"}.get(
        type(value), f"{type(value).__name__} {value!r}")
