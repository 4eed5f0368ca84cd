"""The shard's symbols, resolved at start-up and again every refresh interval.

Manual symbols from the environment file, plus Kalshi's open markets when the environment's
secmaster source is `kalshi`, resolved to shards by the one core rule
(`ssmd_infra.core.resolution`). New markets matching the shard's selector are therefore picked
up intraday and closed ones dropped. A failed refresh keeps the last good set.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from runtime.kalshi.auth import KalshiSigner
from ssmd_infra.core.environment import Environment
from ssmd_infra.core.errors import ConfigError
from ssmd_infra.core.resolution import resolve, resolve_with_problems
from ssmd_infra.core.secmaster import SymbolSource, merge_symbols
from ssmd_infra.core.shard_catalog import with_catalog

log = logging.getLogger("ssmd.connector")

STARTUP_RETRY_SECONDS = 5.0  # secmaster retry after a failed first fetch (not the full interval)


class ShardSymbols:
    """The current symbol set of one shard, and the counters of keeping it current."""

    def __init__(
        self,
        env: Environment,
        shard: str,
        *,
        kalshi_rest_url: str | None = None,
        signer: KalshiSigner | None = None,
        source: SymbolSource | None = None,
        shards_file: Path | None = None,
    ) -> None:
        self.env = env
        self.shard = shard
        # the other shards and pins (`ssmd_infra.core.shard_catalog`), re-read at every refresh
        self._shards_file = shards_file
        self._kalshi_rest_url = kalshi_rest_url
        self._signer = signer
        self._source_given = source
        self.current: frozenset[str] = frozenset()
        self.secmaster_failures = 0
        self.unresolved = 0  # live-universe symbols that are orphans or overlaps

    def _source(self) -> SymbolSource | None:
        if self._source_given is not None:
            return self._source_given
        if self.env.secmaster.source == "kalshi":
            if not self._kalshi_rest_url:
                raise ConfigError(
                    f"environment {self.env.name!r} takes symbols from Kalshi "
                    f"(secmaster.source: kalshi): --kalshi-rest-url is required"
                )
            from runtime.kalshi.rest import KalshiRestSource

            self._source_given = KalshiRestSource(
                self._kalshi_rest_url, signer=self._signer, status=self.env.secmaster.status
            )
            return self._source_given
        return None

    def resolve_now(self) -> frozenset[str]:
        """The shard's symbols now (blocking: secmaster HTTP). With only the file's symbols,
        any orphan or overlap is a configuration error (fatal at start-up, as `ssmd shard
        validate` says). With a live secmaster the exchange can list a market no selector
        foresaw: that market is not captured by any shard, which is logged and exported as
        `ssmd_connector_unresolved_symbols`, but it must not stop this shard's capture."""
        source = self._source()
        env = self._with_other_shards()
        universe = merge_symbols(env, source)
        if source is None:
            layout = resolve(env, universe, complete_universe=False)
            self.unresolved = 0
            return frozenset(layout.symbols_of(self.shard))
        layout, problems = resolve_with_problems(env, universe, complete_universe=True)
        if problems and len(problems) != self.unresolved:
            log.warning(
                "%d symbol problem(s) in the live universe, not captured by any shard: %s",
                len(problems),
                "; ".join(p.message for p in problems[:5]),
            )
        self.unresolved = len(problems)
        return frozenset(layout.symbols_of(self.shard))

    def _with_other_shards(self) -> Environment:
        """The environment to resolve with: in Kubernetes the pod's file holds its own shard
        only, and the mounted shard catalog (updated in place, read afresh each time) adds the
        others, so carve-outs and pins elsewhere take their markets away from this shard."""
        if self._shards_file is None:
            return self.env
        try:
            text = self._shards_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read the shard catalog {self._shards_file}: {exc}") from None
        return with_catalog(self.env, self.shard, text, str(self._shards_file))

    async def first(self) -> bool:
        """Resolve before subscribing. A configuration error is fatal; a secmaster outage is
        not: start from the manual symbols and retry soon. Returns whether the secmaster
        answered."""
        try:
            self.current = await asyncio.to_thread(self.resolve_now)
        except ConfigError:
            raise
        except Exception as exc:
            self.secmaster_failures += 1
            log.warning("secmaster unavailable at start-up (%s); starting from manual symbols", exc)
            layout = resolve(self.env, merge_symbols(self.env, None), complete_universe=False)
            self.current = frozenset(layout.symbols_of(self.shard))
            return False
        return True

    async def refresh(self) -> bool:
        """Re-resolve; on failure keep the last good set. True if the set is fresh."""
        try:
            symbols = await asyncio.to_thread(self.resolve_now)
        except Exception as exc:  # secmaster (HTTP) or resolution trouble: keep serving
            self.secmaster_failures += 1
            log.warning(
                "symbol refresh failed, keeping the last %d symbols: %s", len(self.current), exc
            )
            return False
        if symbols != self.current:
            added = len(symbols - self.current)
            removed = len(self.current - symbols)
            log.info("shard %s: %d symbols (+%d, -%d)", self.shard, len(symbols), added, removed)
        self.current = symbols
        return True
