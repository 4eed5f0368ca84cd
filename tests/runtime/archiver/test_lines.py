"""The archive line's origin fields, and the audit's rule for holes the exchange left: pure
functions, no server."""

from __future__ import annotations

import json

from runtime.archiver.lines import decode_line, epoch_json, frame_part, gap_of
from runtime.archiver.verify import unrecorded_parts
from runtime.kalshi.protocol import Frame, gap_record


def test_the_epoch_comes_from_an_origin_or_gap_id_and_never_from_a_trade_id() -> None:
    assert epoch_json(b"mbq1x2e0a1b2c3d4e.3.7") == b'"mbq1x2e0a1b2c3d4e"'
    assert epoch_json(b"mbq1x2e0a1b2c3d4e.3.n12") == b'"mbq1x2e0a1b2c3d4e"'
    assert epoch_json(b"gap:mbq1x2e0a1b2c3d4e.3.7") == b'"mbq1x2e0a1b2c3d4e"'
    assert epoch_json(b"trade:d91b.c706.x") == b"null"  # a trade id may hold dots
    assert epoch_json(b"something-else") == b"null"
    assert epoch_json(None) == b"null"


def test_sid_and_exchange_seq_come_from_the_frame_as_sent() -> None:
    part, valid = frame_part(b'{"type":"trade","sid":11,"seq":7,"msg":{"trade_id":"t"}}')
    assert valid
    line = json.loads(b'{"seq":1' + part + b"}")
    assert (line["sid"], line["exchange_seq"], line["frame"]["msg"]) == (11, 7, {"trade_id": "t"})
    part, valid = frame_part(b"[1, 2]")  # JSON, but no envelope: no origin
    assert valid and json.loads(b'{"seq":1' + part + b"}")["sid"] is None
    part, valid = frame_part(b"not json{")
    assert not valid and json.loads(b'{"seq":1' + part + b"}")["frame_text"] == "not json{"


def test_a_gap_record_reads_back_from_its_archive_line() -> None:
    frame = Frame(b"", "ticker", "BTCUSD", "", "mbq1x2e0", 4, 12, 9)
    record = gap_record(frame)
    assert record is not None
    line = b'{"seq":5,"id":"%b","type":"ssmd_gap","frame":%b}' % (
        record.msg_id.encode(),
        record.raw,
    )
    gap = gap_of(line)
    assert (gap.epoch, gap.sid, gap.channel, gap.from_, gap.to) == ("mbq1x2e0", 4, "ticker", 9, 11)
    assert decode_line(line).seq == 5


def test_only_the_parts_of_a_hole_no_recorded_gap_covers_are_losses() -> None:
    assert list(unrecorded_parts([(5, 10)], [(3, 6), (8, 8)])) == [(7, 7), (9, 10)]
    assert list(unrecorded_parts([(5, 10)], [(5, 10)])) == []
    assert list(unrecorded_parts([(1, 2), (5, 10)], [(11, 20)])) == [(1, 2), (5, 10)]
    assert list(unrecorded_parts([(1, 2), (5, 6)], [(1, 1), (6, 9)])) == [(2, 2), (5, 5)]
