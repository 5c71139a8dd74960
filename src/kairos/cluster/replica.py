"""A replica as the router knows it, and the task that keeps that knowledge current.

A Kairos replica pushes its state over ``GET /stats/stream`` (stats at most every 0.1 s, its
prefix cache's changes as block hashes): the router's view of its load and cache is what the
replica reports, not a guess. Any other OpenAI-compatible server is health-checked instead, and
the router keeps its own approximation of what it sent there."""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict

import aiohttp

from kairos.wire.blockhash import chain

logger = logging.getLogger("kairos.cluster")
APPROX_BLOCK = 16  # tokens (or bytes of text) per block of the router's own view of a replica's cache
BYTES_PER_TOKEN = 4  # (a prompt seen as text: its length in tokens, roughly)
FRESH_S = 2.0  # what was sent this recently counts as cached even before the replica reports it
SILENT_S = 3.0  # a state channel quiet this long (it beats each second) is a replica gone
PENDING_S = 0.5  # a request sent this long ago is in the replica's stats (pushed every 0.25 s or more often)


class Replica:
    def __init__(self, index: int, url: str, approx_blocks: int):
        self.index, self.url = index, url.rstrip("/")
        self.healthy = False
        self.kairos: bool | None = None  # None: not known yet (no channel opened)
        self.why_down = "not checked yet"
        self.stats: dict[str, float] = {}
        self.cached: set[int] = set()  # its prefix cache's block hashes (Kairos replicas)
        self.sent: OrderedDict[int, float] = OrderedDict()  # block hash -> when sent, least recent first
        self.approx_blocks = approx_blocks
        self.in_flight = 0
        # uncached prompt tokens of requests sent there lately: request key -> (when, tokens, has a
        # TTFT objective); the replica's own stats count them once PENDING_S has passed
        self.pending: dict[int, tuple[float, int, bool]] = {}
        self.ttft_ewma: float | None = None  # seconds to first byte of streams, as the router saw them
        self.tpot_ewma: float | None = None
        self.models: list[dict] = []

    def pending_prefill(self, now: float, ttft_only: bool = False) -> int:
        for key in [k for k, (t, _, _) in self.pending.items() if now - t > PENDING_S]:
            del self.pending[key]
        return sum(n for _, n, due in self.pending.values() if due or not ttft_only)

    @property
    def block_size(self) -> int:
        return int(self.stats.get("kv_block_size", APPROX_BLOCK)) if self.kairos else APPROX_BLOCK

    def matched(self, token_ids: list[int], hashes: dict[int, list[int]], exact: bool, now: float) -> int:
        """Prompt tokens this replica holds cached: as it reports (``exact``: the ids are the
        model's tokens), else as the router's view of what it sent has it. ``hashes``: block size
        -> the prompt's chained block hashes (filled as needed)."""
        bs = self.block_size if exact else APPROX_BLOCK
        hs = hashes.get(bs)
        if hs is None:
            hs = hashes[bs] = chain(token_ids, bs)
        n = 0
        for h in hs:
            t = self.sent.get(h)
            reported = exact and self.kairos and h in self.cached
            if not (reported or (t is not None and (not (exact and self.kairos) or now - t < FRESH_S))):
                break
            n += 1
        return n * bs if exact else n * bs // BYTES_PER_TOKEN  # (blocks of bytes, counted as tokens)

    def remember(self, token_ids: list[int], hashes: dict[int, list[int]], now: float) -> None:
        """What was just sent here (LRU, ``approx_blocks`` at most)."""
        hs = hashes.get(APPROX_BLOCK) or chain(token_ids, APPROX_BLOCK)
        if self.kairos and self.block_size != APPROX_BLOCK:
            hs = hs + (hashes.get(self.block_size) or chain(token_ids, self.block_size))
        for h in hs:
            self.sent[h] = now
            self.sent.move_to_end(h)
        while len(self.sent) > self.approx_blocks:
            self.sent.popitem(last=False)

    def down(self, why: str) -> None:
        if self.healthy:
            logger.warning("replica %s is out: %s", self.url, why)
        self.healthy, self.why_down = False, why

    def up(self) -> None:
        if not self.healthy:
            logger.info("replica %s is in", self.url)
        self.healthy, self.why_down = True, ""

    def observe(self, ttft: float | None, tpot: float | None) -> None:
        a = 0.2
        if ttft is not None:
            self.ttft_ewma = ttft if self.ttft_ewma is None else (1 - a) * self.ttft_ewma + a * ttft
        if tpot is not None:
            self.tpot_ewma = tpot if self.tpot_ewma is None else (1 - a) * self.tpot_ewma + a * tpot

    def apply(self, event: dict) -> None:
        """One event of the state channel."""
        if "dead" in event:
            self.down(f"engine dead: {event['dead']}")
            return
        if "stats" in event:
            self.stats = event["stats"]
        if event.get("cache_snapshot"):
            self.cached = set(event.get("cache") or ())
        else:
            for h in event.get("cache") or ():
                if h > 0:
                    self.cached.add(h)
                else:
                    self.cached.discard(-h)
        health = self.stats.get("health")
        if health not in (None, "ok"):
            self.down(str(health))
        else:
            self.up()


async def watch(rep: Replica, http: aiohttp.ClientSession, interval: float, headers: dict[str, str]) -> None:
    """Keep ``rep`` current for ever: its state channel while it has one, else health checks;
    a replica that fails either is out, and probed with backoff (``interval`` up to 8x)."""
    backoff = interval
    while True:
        heard = False
        try:
            if rep.kairos is not False:
                heard = await _channel(rep, http, headers)
            else:
                await _probe(rep, http, headers)
                if rep.healthy:
                    backoff = interval
                    await asyncio.sleep(interval)
                    continue
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, OSError, ValueError, TimeoutError, asyncio.TimeoutError) as e:
            rep.down(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
        except Exception as e:  # (a malformed event, say: this task must not end, or the view freezes)
            logger.exception("replica %s: state channel", rep.url)
            rep.down(f"{type(e).__name__}: {e}")
        else:
            if rep.kairos and rep.healthy:
                rep.down("state channel closed")
        if rep.healthy or heard:  # (a channel that worked: reconnect at once, backoff afresh)
            backoff = interval
            if rep.healthy:
                continue
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 8 * interval)


async def _channel(rep: Replica, http: aiohttp.ClientSession, headers: dict[str, str]) -> bool:
    # (returns whether it delivered an event)
    heard = False
    async with http.get(rep.url + "/stats/stream", headers=headers) as resp:
        if resp.status in (404, 405):  # not a Kairos server: health checks instead
            rep.kairos = False
            return False
        resp.raise_for_status()
        rep.kairos = True
        await _models(rep, http, headers)
        rest = b""
        while True:  # (lines split here: a snapshot of a big cache is one line longer than readline takes)
            chunk = await asyncio.wait_for(resp.content.readany(), SILENT_S)
            if not chunk:
                return heard
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                if line.startswith(b"data: "):
                    event = json.loads(line[6:])
                    rep.apply(event)
                    heard = True
                    if "dead" in event:
                        return heard


async def _probe(rep: Replica, http: aiohttp.ClientSession, headers: dict[str, str]) -> None:
    async with http.get(rep.url + "/health", headers=headers, timeout=aiohttp.ClientTimeout(total=5)) as resp:
        if resp.status != 200:
            rep.down(f"/health answered {resp.status}")
            return
    if not rep.models:
        await _models(rep, http, headers)
    rep.up()


async def _models(rep: Replica, http: aiohttp.ClientSession, headers: dict[str, str]) -> None:
    # what it serves (for /v1/models and the router's 404 for an unknown model); a server that
    # cannot say is still served to
    try:
        async with http.get(rep.url + "/v1/models", headers=headers, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            if resp.status == 200:
                models = (await resp.json(content_type=None)).get("data")
                rep.models = [m for m in models if isinstance(m, dict) and isinstance(m.get("id"), str)] \
                    if isinstance(models, list) else []
    except (aiohttp.ClientError, ValueError, AttributeError, TimeoutError, asyncio.TimeoutError) as e:
        logger.warning("replica %s: no model list (%s)", rep.url, e)
