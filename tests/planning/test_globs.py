"""Carve-out globs select exactly their group among the symbols they could catch."""

from __future__ import annotations

from ssmd_infra.planning.globs import Domain, globs_for


def test_globs_select_exactly_the_group_within_the_domain() -> None:
    domain = Domain(["BTCUSD", "BTCEUR", "ETHUSD", "KXA-1-X", "KXA-2-X", "KXB-1-X"])
    assert globs_for(["ETHUSD", "KXB-1-X"], domain) == ["ETH*", "KXB-*"]
    # BTC* would also catch BTCEUR: exact ticker instead
    assert globs_for(["BTCUSD"], domain) == ["BTCUSD"]
    assert globs_for(["KXA-1-X", "KXA-2-X"], domain) == ["KXA-*"]
