"""Strict YAML loading that remembers where every key was written.

PyYAML's C loader composes the node tree (fast enough for a 30k-symbol file); we build the
Python values ourselves so that a duplicate key is an error instead of "last one wins",
and so that every key path keeps its line for error messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from ssmd_infra.core.errors import ConfigError, Problem

try:  # the C loader is an optional part of PyYAML wheels; fall back transparently
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - every wheel we pin ships it
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

KeyPath = tuple[str | int, ...]


def format_path(path: KeyPath) -> str:
    """`shards.tier1.resources.cpu`, `symbols.BTCUSD`, `a.list[2]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


@dataclass
class SourceMap:
    """Line (1-based) and column of every key path in a loaded document."""

    file: str
    lines: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: KeyPath) -> tuple[int | None, int | None]:
        """Position of `path`, or of its nearest ancestor that was written in the file."""
        probe = tuple(path)
        while probe:
            if probe in self.lines:
                return self.lines[probe]
            probe = probe[:-1]
        return self.lines.get((), (None, None))

    def problem(self, path: KeyPath, message: str) -> Problem:
        line, col = self.locate(path)
        return Problem(message, file=self.file, line=line, column=col, path=format_path(path))


_scalar_constructor = yaml.constructor.SafeConstructor()


def _construct_scalar(node: yaml.ScalarNode) -> Any:
    if node.tag == "tag:yaml.org,2002:str":
        return node.value
    return _scalar_constructor.construct_object(node, deep=True)


def load_yaml(text: str | bytes, file: str) -> tuple[Any, SourceMap]:
    """Parse one YAML document into plain Python values plus a `SourceMap`.

    Raises `ConfigError` for: empty or binary input, syntax errors (with line and column),
    duplicate keys, non-string keys, anchors/aliases/tags we do not support.
    """
    if isinstance(text, bytes):
        if b"\x00" in text:
            raise ConfigError(Problem("binary file, expected YAML text", file=file))
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                Problem(f"not UTF-8 text (byte {exc.start}), expected YAML", file=file)
            ) from None
    if "\x00" in text:
        raise ConfigError(Problem("binary file, expected YAML text", file=file))
    if not text.strip():
        raise ConfigError(Problem("empty file, expected an environment mapping", file=file))
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        msg = f"YAML syntax error: {exc.problem or exc.context}"
        raise ConfigError(Problem(msg, file=file, line=line, column=col)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(Problem(f"YAML error: {exc}", file=file)) from None
    if node is None:
        raise ConfigError(Problem("empty file, expected an environment mapping", file=file))
    source = SourceMap(file)
    problems: list[Problem] = []
    value = _build(node, (), source, problems)
    ConfigError.collect(problems)
    return value, source


def _build(node: yaml.Node, path: KeyPath, source: SourceMap, problems: list[Problem]) -> Any:
    source.lines.setdefault(path, (node.start_mark.line + 1, node.start_mark.column + 1))
    if isinstance(node, yaml.ScalarNode):
        try:
            return _construct_scalar(node)
        except yaml.YAMLError as exc:
            problems.append(source.problem(path, f"bad value {node.value!r}: {exc}"))
            return None
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), source, problems) for i, item in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                problems.append(
                    Problem(
                        "mapping keys must be plain scalars",
                        file=source.file,
                        line=line,
                        path=format_path(path),
                    )
                )
                continue
            if key_node.tag == "tag:yaml.org,2002:merge":
                problems.append(
                    Problem(
                        "YAML merge keys (<<) are not supported",
                        file=source.file,
                        line=line,
                        path=format_path(path),
                    )
                )
                continue
            key = key_node.value  # keys compare as written: `1` and "1" are the same key
            child = (*path, key)
            if key in out:
                first = source.lines.get(child, (None, None))[0]
                problems.append(
                    Problem(
                        f"duplicate key {key!r} (first defined on line {first})",
                        file=source.file,
                        line=line,
                        column=key_node.start_mark.column + 1,
                        path=format_path(child),
                    )
                )
                continue
            source.lines[child] = (line, key_node.start_mark.column + 1)
            out[key] = _build(value_node, child, source, problems)
        return out
    problems.append(source.problem(path, f"unsupported YAML node {type(node).__name__}"))
    return None
