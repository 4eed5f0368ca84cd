"""An edit is validated as the whole edited file would be, without loading `symbols` twice.

The round-trip editor cuts the `symbols` section out (edits never touch it) and puts it back
byte for byte; `validate_edit` loads only the rest and reuses what the first load read of the
section. Its verdict, problems and line numbers must be those of loading the whole edited text.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ssmd_infra.core.resolution import validate_document
from ssmd_infra.planning import envedit

SYMBOLS = "".join(f"  S{i:02d}-X: {{tier: {1 + i % 2}}}  # symbol {i}\n" for i in range(40))
ENV = (
    "# an environment whose symbols sit between other sections\n"
    "name: many\n"
    "feed: kalshi\n"
    "symbols:\n"
    f"{SYMBOLS}"
    "\n"
    "# the shards\n"
    "shards:\n"
    "  one: {selector: {tier: 1}, replicas: 1}\n"
    "  two: {selector: {tier: 2}, replicas: 1}\n"
    "assignments:\n"
    "  S02-X: two\n"
)


def edited(tmp_path: Path, edit: str) -> tuple[envedit.RoundTrip, str, str, object]:
    path = tmp_path / "many.yaml"
    path.write_text(ENV)
    loaded = envedit._load(path)
    rt = envedit.RoundTrip(ENV, str(path), loaded.env.source)
    assert rt.elided  # the case under test: the section was cut out
    if edit == "pin":
        envedit.pin(rt, "S05-X", "two")
    elif edit == "unpin":
        envedit.unpin(rt, "S02-X")
    else:  # a shard that overlaps with `one` for every tier-1 symbol: refused
        envedit.append_entry(rt.doc["shards"], "dup", {"selector": {"tier": 1}}, rt.indent)
    body = rt.body()
    return rt, body, rt.text(body), loaded


@pytest.mark.parametrize("edit", ["pin", "unpin", "overlap"])
def test_an_edit_is_validated_exactly_as_the_whole_edited_file(tmp_path: Path, edit: str) -> None:
    rt, body, text, loaded = edited(tmp_path, edit)
    fast = envedit.validate_edit(loaded, rt, body, text)  # type: ignore[arg-type]
    full = validate_document(text, str(tmp_path / "many.yaml"))
    assert fast.ok == full.ok == (edit != "overlap")
    assert [str(p) for p in fast.problems] == [str(p) for p in full.problems]
    if full.env is not None:
        assert fast.env is not None and fast.layout is not None and full.layout is not None
        assert fast.env.model_dump() == full.env.model_dump()
        assert fast.layout.assignment == full.layout.assignment
        assert fast.env.source is not None and full.env.source is not None
        assert fast.env.source.lines == full.env.source.lines
    assert text.count("# symbol 39") == 1  # the section came back, once, byte for byte
