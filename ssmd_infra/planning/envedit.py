"""Edits of an environment file that keep everything else as the operator wrote it.

`ssmd shard move` and `ssmd shard create` change one spot of a file that people edit by
hand and review in git, so an edit must not touch any other line: comments, key order,
quoting, flow or block style and spacing are kept. The edit is made on a ruamel.yaml
round-trip tree, then spliced into the original text line by line (ruamel normalises some
spacing, such as `{ tier: 1 }`, on lines the edit never touched; those lines are taken
from the original). The result is validated *before* anything is written (schema,
resolution: every symbol in exactly one shard) and written atomically (a temporary file
in the same directory, then a rename), after checking that the file did not change
under us. A refused edit leaves the file byte-identical.
"""

from __future__ import annotations

import difflib
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import CommentMark
from ruamel.yaml.error import YAMLError as RuamelYAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString
from ruamel.yaml.tokens import CommentToken

from ssmd_infra.adapters.files import write_atomically
from ssmd_infra.core.environment import (
    DEFAULT_RESOURCES,
    Environment,
    environment_from_data,
    environment_path,
)
from ssmd_infra.core.errors import ConfigError, Problem, SsmdError
from ssmd_infra.core.quantity import canonical_quantity
from ssmd_infra.core.resolution import (
    Layout,
    Validation,
    resolve_with_problems,
    validate_document,
    validate_loaded,
)
from ssmd_infra.core.secmaster import merge_symbols
from ssmd_infra.core.selectors import Selector, parse_selector_text
from ssmd_infra.core.yamlsource import SourceMap, load_yaml


class EditRefused(SsmdError):
    """An edit that was not made; the file is unchanged."""


@dataclass(frozen=True)
class EditResult:
    """What an edit did (or, with `write=False`, would do)."""

    path: Path
    text: str  # the new file content
    before: Layout
    after: Layout
    summary: str
    written: bool

    @property
    def moves(self) -> dict[str, tuple[str | None, str | None]]:
        return self.after.moves_from(self.before)


# -- reading ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Loaded:
    path: Path
    raw: bytes
    data: Any  # the document as plain data (what `load_yaml` read)
    env: Environment
    layout: Layout
    problems: list[Problem]


def _load(ref: str | Path) -> _Loaded:
    path = environment_path(str(ref))
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read environment file {path}: {exc.strerror}") from None
    data, source = load_yaml(raw, str(path))
    env = environment_from_data(data, source)  # an unloadable file is not edited
    layout, problems = resolve_with_problems(
        env, merge_symbols(env), complete_universe=env.secmaster.source == "manual"
    )
    return _Loaded(path, raw, data, env, layout, problems)


# -- round trip ---------------------------------------------------------------------------------


MAX_LISTED = 20  # problems listed when an edit is refused
ELIDED_SECTION = "symbols"  # the section that grows with the universe; edits never touch it
_PLACEHOLDER_KEY = "__ssmd_elided__"


class RoundTrip:
    """A ruamel.yaml round-trip tree of one document, and the text of its edited form.

    ruamel.yaml is pure Python and slow (tens of seconds for a 30k-symbol file), so the
    `symbols` section, which edits never touch, is cut out before ruamel sees the document
    and put back, byte for byte, afterwards: `doc` has `symbols` as an empty placeholder.
    `source` (the strict loader's map of the same text) says where the section is; without
    it the text is loaded once more to find out.
    """

    def __init__(self, text: str, file: str, source: SourceMap | None = None) -> None:
        self.crlf = "\r\n" in text
        self.bom = text.startswith("\ufeff")
        self.original = text.removeprefix("\ufeff").replace("\r\n", "\n")
        if self.original and not self.original.endswith("\n"):
            self.original += "\n"
        self.file = file
        self._yaml = YAML(typ="rt")
        self._yaml.preserve_quotes = True
        self._yaml.width = 1 << 16  # never fold long lines
        mapping, sequence, offset = _guess_indent(self.original)
        self.indent = mapping  # columns per nesting level of block mappings
        self._yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
        self._yaml.explicit_start = self.original.lstrip().startswith("---")
        self._elided: tuple[str, str] | None = None  # (placeholder line, original section)
        self._text = self.original
        span = _section_span(self.original, ELIDED_SECTION, file, source)
        self.section_line = span[0] + 1 if span is not None else 0  # 1-based, in `original`
        if span is not None:
            lines = self.original.splitlines(keepends=True)
            placeholder = f"{ELIDED_SECTION}: {{{_PLACEHOLDER_KEY}: 0}}\n"
            self._elided = (placeholder, "".join(lines[span[0] : span[1]]))
            self._text = "".join(lines[: span[0]]) + placeholder + "".join(lines[span[1] :])
        self.doc: CommentedMap = self._load(self._text)
        self.normal = self._dump()
        if self._elided is not None and self.normal.count(self._elided[0]) != 1:
            # ruamel did not keep the placeholder as one line: do the slow, whole round trip
            self._elided, self._text = None, self.original
            self.doc = self._load(self._text)
            self.normal = self._dump()

    def _load(self, text: str) -> CommentedMap:
        try:
            doc = self._yaml.load(text)
        except RuamelYAMLError as exc:  # the strict loader accepted it; ruamel did not
            raise EditRefused(f"{self.file}: cannot edit this file's YAML: {exc}") from None
        if not isinstance(doc, CommentedMap):
            raise EditRefused(f"{self.file}: expected a mapping at the top level")
        return doc

    def _dump(self) -> str:
        out = io.StringIO()
        self._yaml.dump(self.doc, out)
        return out.getvalue()

    @property
    def elided(self) -> bool:
        """Whether the `symbols` section was cut out (and `body()` holds its placeholder)."""
        return self._elided is not None

    def body(self) -> str:
        """The edited document with the `symbols` section still cut out (when it was): only
        the lines an edit changed differ from the original."""
        edited = self._dump()
        spliced = _splice(self._text, self.normal, edited)
        if spliced != edited and not _same_data(spliced, edited, self.file):
            spliced = edited  # the splice could not be trusted: take ruamel's text whole
        if self._elided is not None:
            placeholder, _section = self._elided
            if spliced.count(placeholder) != 1 or not (
                spliced.startswith(placeholder) or f"\n{placeholder}" in spliced
            ):
                raise EditRefused(f"{self.file} unchanged: the edit moved the `symbols` section")
        return spliced

    def text(self, body: str | None = None) -> str:
        """The edited document (of `body()`, or of the given one): the original text with
        only the edited lines changed, the `symbols` section put back byte for byte."""
        spliced = self.body() if body is None else body
        if self._elided is not None:
            placeholder, section = self._elided
            spliced = spliced.replace(placeholder, section, 1)
        if self.crlf:
            spliced = spliced.replace("\n", "\r\n")
        return ("\ufeff" if self.bom else "") + spliced

    def section_lines(self) -> int:
        """How many lines the cut-out section holds (0 when nothing was cut out)."""
        return 0 if self._elided is None else self._elided[1].count("\n")


def _section_span(
    text: str, key: str, file: str, source: SourceMap | None
) -> tuple[int, int] | None:
    """0-based [start, end) line range of top-level `key` up to the next top-level key, when
    the document is a block mapping with one key per line; None otherwise."""
    if source is None:
        try:
            source = load_yaml(text, file)[1]
        except ConfigError:
            return None
    top = {path[0]: place for path, place in source.lines.items() if len(path) == 1}
    if key not in top or any(col != 1 for _line, col in top.values()):
        return None
    starts = sorted(line for line, _col in top.values())
    if len(set(starts)) != len(starts):
        return None
    line = top[key][0]
    later = [s for s in starts if s > line]
    end = later[0] - 1 if later else len(text.splitlines())
    return line - 1, end


def _guess_indent(text: str) -> tuple[int, int, int]:
    """(mapping indent, sequence indent, dash offset) as the file writes them."""
    mapping = None
    dash_offset = None
    previous_indent = 0
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(stripped)
        if stripped.startswith("- ") and dash_offset is None:
            dash_offset = max(0, indent - previous_indent)
        elif indent > previous_indent and mapping is None:
            mapping = indent - previous_indent
        previous_indent = indent
    mapping = mapping or 2
    offset = dash_offset if dash_offset is not None else 0
    return mapping, offset + 2, offset


def _splice(original: str, normal: str, edited: str) -> str:
    """Apply the change `normal` → `edited` to `original` (which `normal` normalises)."""
    if original == normal:
        return edited
    orig = original.splitlines(keepends=True)
    norm = normal.splitlines(keepends=True)
    new = edited.splitlines(keepends=True)
    edits = difflib.SequenceMatcher(None, norm, new, False).get_opcodes()
    if len(orig) == len(norm):
        # ruamel keeps the line structure and only respaces lines: line k of `normal` is
        # line k of `original`
        out: list[str] = []
        for tag, i1, i2, j1, j2 in edits:
            out.extend(orig[i1:i2] if tag == "equal" else new[j1:j2])
        return "".join(out)
    to_orig: dict[int, int] = {}
    for tag, a1, a2, b1, _b2 in difflib.SequenceMatcher(None, norm, orig, False).get_opcodes():
        if tag == "equal":
            for k in range(a2 - a1):
                to_orig[a1 + k] = b1 + k
    out = []
    done = 0  # lines of `orig` already emitted
    for tag, i1, i2, j1, j2 in edits:
        if tag == "equal":
            continue
        start = 0 if i1 == 0 else to_orig.get(i1 - 1, -2) + 1
        end = len(orig) if i2 == len(norm) else to_orig.get(i2, -1)
        if start < done or end < start:
            return edited  # the changed lines are not anchored in the original
        out.extend(orig[done:start])
        out.extend(new[j1:j2])
        done = end
    out.extend(orig[done:])
    return "".join(out)


def _same_data(a: str, b: str, file: str) -> bool:
    try:
        return bool(load_yaml(a, file)[0] == load_yaml(b, file)[0])
    except ConfigError:
        return False


def _trailing(mapping: CommentedMap) -> tuple[CommentedMap, Any] | None:
    """The deepest (mapping, last key) of `mapping`'s last entry: where ruamel keeps the
    comments and blank lines that follow the entry (often the next section's heading)."""
    found = None
    node: Any = mapping
    while isinstance(node, CommentedMap) and len(node) and not node.fa.flow_style():
        last = list(node.keys())[-1]
        found = (node, last)
        node = node[last]
    return found


def _post_comment(owner: CommentedMap, key: Any) -> CommentToken | None:
    entry = owner.ca.items.get(key)
    if entry and len(entry) > 2 and isinstance(entry[2], CommentToken):
        return entry[2]
    return None


def _set_post_comment(owner: CommentedMap, key: Any, token: CommentToken | None) -> None:
    entry = owner.ca.items.setdefault(key, [None, None, None, None])
    entry[2] = token


def _comment(text: str) -> CommentToken:
    return CommentToken(text, CommentMark(0), None)


def _split_trailing(value: str, indent: int) -> tuple[str, str]:
    """(the part that belongs to the entry, the part that belongs to what follows).

    The first line ends the entry's own line; then comment lines indented deeper than
    the entry's key stay with it; the rest (blank lines, section headings) moves.
    """
    first, sep, rest = value.partition("\n")
    keep = first + sep
    lines = rest.splitlines(keepends=True)
    n = 0
    while n < len(lines):
        stripped = lines[n].lstrip(" ")
        if stripped.startswith("#") and len(lines[n]) - len(stripped) > indent:
            n += 1
            continue
        break
    return keep + "".join(lines[:n]), "".join(lines[n:])


def append_entry(mapping: CommentedMap, key: str, value: Any, indent: int) -> None:
    """Add `key: value` at the end of a block mapping, keeping the comments that followed
    the previous last entry *after* the new one (they introduce what comes next)."""
    before = _trailing(mapping)
    moved = ""
    if before is not None:
        owner, last = before
        token = _post_comment(owner, last)
        if token is not None:
            keep, moved = _split_trailing(str(token.value), indent)
            token.value = keep
    mapping[key] = value
    after = _trailing(mapping)
    if moved and after is not None:
        owner, last = after
        token = _comment("\n" + moved)
        existing = _post_comment(owner, last)
        if existing is not None:  # the new value ends with its own comment line
            existing.value = str(existing.value) + moved
        else:
            _set_post_comment(owner, last, token)


def remove_entry(parent: CommentedMap, parent_key: str, key: str) -> None:
    """Delete `key` from `parent[parent_key]`, keeping the comments that followed it."""
    mapping = parent[parent_key]
    keys = list(mapping.keys())
    token = _post_comment(mapping, key)
    del mapping[key]
    mapping.ca.items.pop(key, None)
    if token is None or key != keys[-1]:
        if token is not None:  # a middle entry: its own end-of-line comment goes with it
            _, moved = _split_trailing(str(token.value), 10**6)
            if moved:
                previous = keys[keys.index(key) - 1] if keys.index(key) else None
                _carry(mapping, previous, parent, parent_key, moved)
        return
    _, moved = _split_trailing(str(token.value), 10**6)
    previous = keys[-2] if len(keys) > 1 else None
    if not mapping:
        mapping.fa.set_flow_style()
    _carry(mapping, previous, parent, parent_key, moved)


def _carry(
    mapping: CommentedMap, previous: str | None, parent: CommentedMap, parent_key: str, text: str
) -> None:
    if not text:
        return
    if previous is not None:
        owner, key = mapping, previous
    else:
        owner, key = parent, parent_key
    existing = _post_comment(owner, key)
    if existing is not None:
        existing.value = str(existing.value) + text
    else:
        _set_post_comment(owner, key, _comment("\n" + text))


def _scalar(text: str) -> Any:
    """A selector value as YAML will read it back as the same text: `1` stays a number,
    `yes`/`null`/`1.0e3`-like strings are quoted so the strict loader keeps them text."""
    if re.fullmatch(r"-?[0-9]+", text) and str(int(text)) == text:
        return int(text)
    try:
        reread = yaml.safe_load(text)
    except yaml.YAMLError:
        reread = None
    if isinstance(reread, str) and reread == text:
        return text
    return DoubleQuotedScalarString(text)


# -- writing ------------------------------------------------------------------------------------


def validate_edit(loaded: _Loaded, rt: RoundTrip, body: str, text: str) -> Validation:
    """`validate_document(text)`, without loading the `symbols` section a second time.

    The edited text is `body` with the cut-out `symbols` section put back byte for byte at
    its placeholder, so its data is `body`'s with the section's data as `loaded` read it,
    and its lines are `body`'s with the section's lines shifted to the placeholder's place.
    Only `body` (everything but the symbols, small) is loaded here. Without a cut-out section
    the whole text is validated.
    """
    file = str(loaded.path)
    original = loaded.env.source
    if not rt.elided or not isinstance(loaded.data, dict) or original is None:
        return validate_document(text, file)
    try:
        data, body_source = load_yaml(body, file)
    except ConfigError:
        return validate_document(text, file)
    section = (ELIDED_SECTION,)
    if not isinstance(data, dict) or data.get(ELIDED_SECTION) != {_PLACEHOLDER_KEY: 0}:
        return validate_document(text, file)
    placeholder_line = body_source.lines[section][0]
    extra = rt.section_lines() - 1  # the placeholder is one line of the section's many
    source = SourceMap(file)
    for path, (line, column) in body_source.lines.items():
        if path[:1] == section and len(path) > 1:
            continue  # the placeholder's own key
        source.lines[path] = (line + extra if line > placeholder_line else line, column)
    shift = placeholder_line - rt.section_line
    for path, (line, column) in original.lines.items():
        if path[:1] == section and len(path) > 1:
            source.lines[path] = (line + shift, column)
    data[ELIDED_SECTION] = loaded.data.get(ELIDED_SECTION)
    return validate_loaded(data, source)


def check_result(loaded: _Loaded, report: Validation) -> Validation:
    """`report` of the would-be content; `EditRefused` (nothing written) when it failed."""
    if not report.ok:
        shown = report.problems[:MAX_LISTED]
        listed = "\n".join(f"  - {p}" for p in shown)
        if len(report.problems) > len(shown):
            listed += f"\n  ... and {len(report.problems) - len(shown)} more"
        raise EditRefused(
            f"{loaded.path} unchanged: the edited environment would not validate "
            f"(line numbers as they would be after the edit):\n{listed}"
        )
    return report


def _finish(loaded: _Loaded, rt: RoundTrip, summary: str, write: bool) -> EditResult:
    body = rt.body()
    text = rt.text(body)
    report = check_result(loaded, validate_edit(loaded, rt, body, text))
    assert report.layout is not None
    data = text.encode("utf-8")
    if write:
        write_atomically(loaded.path, data, expected=loaded.raw)
    return EditResult(loaded.path, text, loaded.layout, report.layout, summary, write)


# -- edits --------------------------------------------------------------------------------------


def move_symbol(
    ref: str | Path, symbol: str, *, source: str, target: str, write: bool = True
) -> EditResult:
    """Pin `symbol` to shard `target` in `assignments`; it must be in shard `source` now.

    When `target` is where the selectors alone put the symbol, the edit removes its pin
    instead of writing a redundant one.
    """
    loaded = _load(ref)
    env = loaded.env
    path = loaded.path
    if target not in env.shards:
        raise EditRefused(
            f"{path} unchanged: no shard {target!r} to move to (shards: {', '.join(env.shards)})"
        )
    if source not in env.shards:
        raise EditRefused(
            f"{path} unchanged: no shard {source!r} (shards: {', '.join(env.shards)})"
        )
    universe = merge_symbols(env)
    if symbol not in universe:
        hint = (
            ""
            if env.secmaster.source == "manual"
            else f"; symbols from the {env.secmaster.source} secmaster are known only at run "
            f"time: add {symbol!r} with its attributes under `symbols` first"
        )
        raise EditRefused(f"{path} unchanged: unknown symbol {symbol!r}{hint}")
    by_selector = _selector_shards(env, symbol, universe[symbol])
    current = loaded.layout.assignment.get(symbol)
    if current is None:  # an orphan or an overlap: say where it stands
        if source not in by_selector:
            where = (
                f"matches shards {', '.join(by_selector)} (overlap)"
                if by_selector
                else "matches no shard (orphan)"
            )
            raise EditRefused(
                f"{path} unchanged: symbol {symbol!r} is not in shard {source!r}: it {where}"
            )
    elif current != source:
        raise EditRefused(
            f"{path} unchanged: symbol {symbol!r} is in shard {current!r}, not {source!r}"
        )
    if current == target:
        raise EditRefused(f"{path} unchanged: symbol {symbol!r} is already in shard {target!r}")

    rt = RoundTrip(loaded.raw.decode("utf-8"), str(path), env.source)
    natural = by_selector[0] if len(by_selector) == 1 else None
    if natural is None and len(by_selector) > 1:
        natural = _winner_of(env, by_selector)
    if natural == target and symbol in env.assignments:
        unpin(rt, symbol)
        summary = f"removed the pin of {symbol}: its selector puts it in {target} (was {source})"
    else:
        pin(rt, symbol, target)
        summary = f"pinned {symbol} to {target} (was {source})"
    return _finish(loaded, rt, summary, write)


def pin(rt: RoundTrip, symbol: str, shard: str) -> None:
    """Set `assignments[symbol] = shard` in the round-trip tree (adding `assignments`)."""
    pins = rt.doc.get("assignments")
    if not isinstance(pins, CommentedMap):
        if "assignments" in rt.doc:  # `assignments:` with no value
            del rt.doc["assignments"]
        append_entry(rt.doc, "assignments", CommentedMap({symbol: shard}), 0)
    elif symbol in pins:
        pins[symbol] = shard
    elif not pins:
        pins.fa.set_block_style()
        pins[symbol] = shard
    else:
        append_entry(pins, symbol, shard, rt.indent)


def unpin(rt: RoundTrip, symbol: str) -> None:
    """Remove the pin of `symbol`, if any (comments around it are kept)."""
    pins = rt.doc.get("assignments")
    if isinstance(pins, CommentedMap) and symbol in pins:
        remove_entry(rt.doc, "assignments", symbol)


def _selector_shards(env: Environment, symbol: str, attrs: Mapping[str, str]) -> list[str]:
    out = []
    for name, shard in env.shards.items():
        try:
            if Selector.build(name, shard.selector).matches(symbol, attrs):
                out.append(name)
        except ValueError:
            continue
    return out


def _winner_of(env: Environment, names: list[str]) -> str | None:
    selectors = [Selector.build(n, env.shards[n].selector) for n in names]
    for candidate in selectors:
        if all(c is candidate or candidate.more_specific_than(c) for c in selectors):
            return candidate.shard
    return None


def create_shard(
    ref: str | Path,
    name: str,
    selector: str,
    *,
    replicas: int = 1,
    cpu: str | None = None,
    memory: str | None = None,
    write: bool = True,
) -> EditResult:
    """Add shard `name` with `selector` (`k=v,k2=v2`, alternatives as `v1|v2`)."""
    loaded = _load(ref)
    env = loaded.env
    path = loaded.path
    if name in env.shards:
        raise EditRefused(f"{path} unchanged: shard {name!r} already exists")
    try:
        spec = parse_selector_text(selector)
    except ValueError as exc:
        raise EditRefused(f"{path} unchanged: bad --selector {selector!r}: {exc}") from None
    for flag, value in (("--cpu", cpu), ("--memory", memory)):
        if value is not None:
            try:
                canonical_quantity(value)
            except ValueError as exc:
                raise EditRefused(f"{path} unchanged: {flag}: {exc}") from None

    rt = RoundTrip(loaded.raw.decode("utf-8"), str(path), env.source)
    shards = rt.doc.get("shards")
    if not isinstance(shards, CommentedMap) or shards.fa.flow_style():
        raise EditRefused(f"{path} unchanged: `shards` is not a block mapping; edit it by hand")
    body = CommentedMap()
    sel = CommentedMap()
    for key, wanted in spec.items():
        sel[key] = (
            _scalar(wanted) if isinstance(wanted, str) else _flow_list([_scalar(v) for v in wanted])
        )
    body["selector"] = sel
    body["replicas"] = replicas
    if cpu is not None or memory is not None:
        res = CommentedMap()
        res["cpu"] = DoubleQuotedScalarString(cpu or DEFAULT_RESOURCES.requests.cpu)
        res["memory"] = DoubleQuotedScalarString(memory or DEFAULT_RESOURCES.requests.memory)
        body["resources"] = res
    append_entry(shards, name, body, rt.indent)
    return _finish(loaded, rt, f"created shard {name}", write)


def _flow_list(items: list[Any]) -> Any:
    from ruamel.yaml.comments import CommentedSeq

    seq = CommentedSeq(items)
    seq.fa.set_flow_style()
    return seq


__all__ = [
    "EditRefused",
    "EditResult",
    "RoundTrip",
    "append_entry",
    "check_result",
    "create_shard",
    "move_symbol",
    "pin",
    "remove_entry",
    "unpin",
]
