"""``GET /discovery/resources`` for the whole fleet: the upstreams' Bazaar catalogues, merged.

Each upstream's catalogue is read page by page (``limit=100``; at most
``discovery.max_pages_per_upstream`` pages and ``max_items_per_upstream`` items) through the
engine's transport, with the upstream's own credentials and no redirects, and kept for
``discovery.cache_ttl_s``. Callers never wait on an upstream, except the first ones, for at most
``first_fill_wait_s``: a stale catalogue is served while one refresh per upstream runs behind it.
An upstream that answers 404, 405, 401, 403, a redirect or a body that is not a catalogue offers
no discovery (to us): it is asked again only after ``no_discovery_retry_s``.

Items are keyed by ``resource`` (and, for an MCP tool, its name: the bazaar spec keys MCP tools by
URL and tool); the newest ``lastUpdated`` wins and the ``accepts`` lists are merged. The merged
catalogue is sorted by key, so a page stays where it was while catalogues are refreshed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from ._types import JSONObject
from ._version import __version__
from .auth import Authenticator
from .config import DiscoveryConfig
from .errors import SigningError, TransportError
from .transport import Transport, UpstreamRequest
from .upstream import Upstream

logger = logging.getLogger("x402_aggregator.discovery")

PATH = "/discovery/resources"
#: The spec's largest page, so the fewest requests per upstream.
PAGE_SIZE = 100
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
#: Statuses that say "not now" rather than "not here": the catalogue is kept and asked again.
_TRANSIENT = frozenset({408, 425, 429})
#: (resource, MCP tool name or "").
Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class DiscoveryQuery:
    """What a caller asked for: filters (None or empty: any) and one page."""

    type: str | None = None
    pay_to: str | None = None
    scheme: str | None = None
    network: str | None = None
    #: Extension keys every item must carry (the SDK sends one; a comma-separated list works).
    extensions: tuple[str, ...] = ()
    limit: int = DEFAULT_LIMIT
    offset: int = 0


def parse_query(params: Mapping[str, str]) -> DiscoveryQuery:
    """Read the spec's and the SDK's query parameters; ``ValueError`` says which one is bad."""
    extensions = params.get("extensions", "")
    return DiscoveryQuery(
        type=params.get("type") or None,
        pay_to=params.get("payTo") or None,
        scheme=params.get("scheme") or None,
        network=params.get("network") or None,
        extensions=tuple(key.strip() for key in extensions.split(",") if key.strip()),
        limit=_integer(params, "limit", DEFAULT_LIMIT, MAX_LIMIT, "from 1 to 100"),
        offset=_integer(params, "offset", 0, None, "of at least 0"),
    )


def _integer(
    params: Mapping[str, str], name: str, default: int, high: int | None, bounds: str
) -> int:
    text = params.get(name)
    if text is None:
        return default
    text = text.strip()
    # ASCII digits only ("-1", "1e3", "²" are refused); 12 digits is far past any catalogue.
    valid = text.isascii() and text.isdigit() and len(text) <= 12
    value = int(text) if valid else -1
    low = 1 if high is not None else 0
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer {bounds}")
    return value


def select(items: Sequence[JSONObject], query: DiscoveryQuery) -> JSONObject:
    """The page of ``items`` matching ``query``, in the spec's list shape."""
    matching = [item for item in items if _matches(item, query)]
    return {
        "x402Version": 2,
        "items": matching[query.offset : query.offset + query.limit],
        "pagination": {"limit": query.limit, "offset": query.offset, "total": len(matching)},
    }


def _matches(item: JSONObject, query: DiscoveryQuery) -> bool:
    if query.type is not None and item.get("type") != query.type:
        return False
    if query.extensions:
        present = item.get("extensions")
        if not isinstance(present, dict) or any(key not in present for key in query.extensions):
            return False
    if query.pay_to is None and query.scheme is None and query.network is None:
        return True
    return any(_option_matches(option, query) for option in _accepts_of(item))


def _option_matches(option: object, query: DiscoveryQuery) -> bool:
    """One payment option satisfies every ``accepts`` filter at once."""
    if not isinstance(option, dict):
        return False
    return (
        (query.scheme is None or option.get("scheme") == query.scheme)
        and (query.network is None or option.get("network") == query.network)
        and (query.pay_to is None or _same_address(option.get("payTo"), query.pay_to))
    )


def _same_address(value: object, wanted: str) -> bool:
    if not isinstance(value, str):
        return False
    # EVM addresses are hex, whose case is only a checksum; other chains' (base58) are exact.
    if value[:2].lower() == "0x" and wanted[:2].lower() == "0x":
        return value.lower() == wanted.lower()
    return value == wanted


def _accepts_of(item: JSONObject) -> list[object]:
    accepts = item.get("accepts")
    return accepts if isinstance(accepts, list) else []


def merge_catalogues(catalogues: Iterable[Iterable[JSONObject]]) -> list[JSONObject]:
    """One item per key, sorted by key: the newest ``lastUpdated`` wins, ``accepts`` are merged.

    ``catalogues`` come in order of preference: between equally new items the earlier wins.
    """
    groups: dict[Key, list[JSONObject]] = {}
    for catalogue in catalogues:
        for item in catalogue:
            groups.setdefault(item_key(item), []).append(item)
    return [_merge(groups[key]) for key in sorted(groups)]


def _merge(group: list[JSONObject]) -> JSONObject:
    winner = max(group, key=updated_at)  # max keeps the first of equals
    if len(group) == 1:
        return winner
    accepts: list[object] = []
    seen: set[bytes] = set()
    for item in (winner, *group):
        for option in _accepts_of(item):
            fingerprint = orjson.dumps(option, option=orjson.OPT_SORT_KEYS)
            if fingerprint not in seen:
                seen.add(fingerprint)
                accepts.append(option)
    return {**winner, "accepts": accepts}


def item_key(item: JSONObject) -> Key:
    """``resource``, plus the tool name of an MCP item (one MCP server serves many tools)."""
    if item.get("type") != "mcp":
        return item["resource"], ""
    node: object = item.get("extensions")
    for name in ("bazaar", "info", "input"):
        node = node.get(name) if isinstance(node, dict) else None
    tool = node.get("tool", node.get("toolName")) if isinstance(node, dict) else None
    return item["resource"], tool if isinstance(tool, str) else ""


def updated_at(item: JSONObject) -> float:
    """``lastUpdated`` as epoch seconds: ISO 8601 (spec), or epoch s/ms numbers; else oldest."""
    value = item.get("lastUpdated")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value / 1000 if value > 1e11 else float(value)
    if not isinstance(value, str):
        return -math.inf
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return -math.inf
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def parse_page(body: bytes) -> tuple[list[JSONObject], int | None, int]:
    """One upstream page: its items that name a resource, ``pagination.total`` if given, and
    how many items the page had in all (the next offset moves by that, not by what we kept).

    Raises ``ValueError`` when the body is not a catalogue page at all.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ValueError("not JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("items"), list):
        raise ValueError("no items list")
    items = [
        item
        for item in data["items"]
        if isinstance(item, dict) and isinstance(item.get("resource"), str) and item["resource"]
    ]
    pagination = data.get("pagination")
    total = pagination.get("total") if isinstance(pagination, dict) else None
    valid = isinstance(total, int) and not isinstance(total, bool) and total >= 0
    return items, total if valid else None, len(data["items"])


class _Unavailable(Exception):
    """A catalogue page could not be read; ``absent``: the upstream offers no discovery."""

    def __init__(self, message: str, *, absent: bool) -> None:
        super().__init__(message)
        self.absent = absent


@dataclass(slots=True)
class _Source:
    """One upstream's catalogue as last read, and when to read it again."""

    upstream: Upstream
    auth: Authenticator = field(repr=False)
    headers: dict[str, str] = field(repr=False)
    items: list[JSONObject] = field(default_factory=list, repr=False)
    due_at: float = -math.inf
    task: asyncio.Task[None] | None = None
    error: str | None = None
    #: A first refresh has ended (well or not): callers never wait on this upstream again.
    tried: bool = False


class Discovery:
    """The upstreams' merged Bazaar catalogue, cached and refreshed behind the callers."""

    def __init__(
        self,
        upstreams: Sequence[Upstream],
        transport: Transport,
        config: DiscoveryConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._transport = transport
        self._clock = clock
        # Preference on equal lastUpdated: lower priority first, then file order (sort is stable).
        ordered = sorted(upstreams, key=lambda up: up.config.priority)
        self._sources = [_source(up) for up in ordered] if config.enabled else []
        self._merged: list[JSONObject] | None = None
        self._fill_until: float | None = None
        self._closed = False

    async def page(self, query: DiscoveryQuery) -> JSONObject:
        """The spec's answer to ``GET /discovery/resources`` for ``query``."""
        return select(await self.catalogue(), query)

    async def catalogue(self) -> list[JSONObject]:
        """The merged items; starts the refreshes that are due, waits only during the first fill."""
        self._refresh_due()
        if self._fill_until is None:
            self._fill_until = self._clock() + self.config.first_fill_wait_s
        running = [s.task for s in self._sources if s.task is not None and not s.tried]
        wait_s = self._fill_until - self._clock()
        if running and wait_s > 0:
            await asyncio.wait(running, timeout=wait_s)
        if self._merged is None:
            self._merged = merge_catalogues(source.items for source in self._sources)
        return self._merged

    async def aclose(self) -> None:
        """Cancel running refreshes (before the engine closes the transport they use)."""
        self._closed = True
        tasks = [s.task for s in self._sources if s.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _refresh_due(self) -> None:
        now = self._clock()
        for source in self._sources:
            # Single flight: one refresh per upstream at a time; a drained upstream gets no traffic.
            if source.task is not None or now < source.due_at or self._closed:
                continue
            if source.upstream.health.drained:
                continue
            # Due again after the TTL whatever happens, so nothing can make us hammer an upstream.
            source.due_at = now + self.config.cache_ttl_s
            name = f"discovery refresh {source.upstream.name}"
            source.task = asyncio.create_task(self._refresh(source), name=name)

    async def _refresh(self, source: _Source) -> None:
        try:
            items = await self._fetch(source)
        except _Unavailable as exc:
            self._failed(source, exc)
        else:
            if source.error is not None:
                logger.info("discovery: %s answers again", source.upstream.name)
            source.items, source.error = items, None
            self._merged = None
        finally:
            source.task, source.tried = None, True

    def _failed(self, source: _Source, exc: _Unavailable) -> None:
        name, error = source.upstream.name, str(exc)
        if exc.absent:
            # It says it has no catalogue (for us): forget what it had, leave it alone a while.
            source.due_at = self._clock() + self.config.no_discovery_retry_s
            if source.items:
                source.items, self._merged = [], None
            if source.error != error:
                logger.info("discovery: %s offers no discovery (%s)", name, error)
        elif source.error != error:
            logger.warning(
                "discovery: %s catalogue not refreshed, keeping the last: %s", name, error
            )
        source.error = error

    async def _fetch(self, source: _Source) -> list[JSONObject]:
        """Page through one upstream's catalogue, within the configured bounds."""
        found: dict[Key, list[JSONObject]] = {}
        offset, limit = 0, self.config.max_items_per_upstream
        previous_page: list[JSONObject] | None = None
        for _ in range(self.config.max_pages_per_upstream):
            try:
                items, total, count = await self._page(source, offset)
            except _Unavailable as exc:
                if offset == 0:
                    raise
                # Pages before this one were good: keep them, and the last copy of the rest.
                logger.warning(
                    "discovery: %s page at offset %d: %s", source.upstream.name, offset, exc
                )
                for item in source.items:
                    found.setdefault(item_key(item), [item])
                break
            # An upstream that ignores offset sends the same page again: that is the end.
            if items == previous_page:
                break
            previous_page = items
            for item in items:
                # One resource may be listed once per network: merge them like across upstreams.
                found.setdefault(item_key(item), []).append(item)
            offset += count
            # The end: an empty page, the total reached, or the bound.
            done = total is not None and offset >= total
            if done or not count or len(found) >= limit:
                break
        return [_merge(group) for group in found.values()][:limit]

    async def _page(self, source: _Source, offset: int) -> tuple[list[JSONObject], int | None, int]:
        upstream = source.upstream
        url = f"{upstream.display_url}{PATH}"
        try:
            # Signed kinds bind a token to method, host and path (not the query): one per refresh.
            headers = {**source.headers, **source.auth.headers("GET", url)}
            response = await self._transport.send(
                UpstreamRequest(
                    method="GET",
                    url=f"{url}?limit={PAGE_SIZE}&offset={offset}",
                    headers=headers,
                    timeout_s=upstream.config.timeout_s,
                    connect_timeout_s=upstream.config.connect_timeout_s,
                )
            )
        except (TransportError, SigningError) as exc:
            raise _Unavailable(str(exc), absent=False) from None
        except (ValueError, RuntimeError) as exc:
            # Not mapped by the transport; its text may quote a header, so only its type.
            raise _Unavailable(f"unexpected {type(exc).__name__}", absent=False) from None
        status = response.status
        if status != 200:
            raise _Unavailable(f"HTTP {status}", absent=status < 500 and status not in _TRANSIENT)
        try:
            return parse_page(response.body)
        except ValueError as exc:
            raise _Unavailable(f"HTTP 200 but not a catalogue ({exc})", absent=True) from None


def _source(upstream: Upstream) -> _Source:
    auth = upstream.auth  # shares the upstream's token cache
    headers = {
        "Accept": "application/json",
        "User-Agent": f"x402-aggregator/{__version__}",
        **upstream.config.headers,
    }
    return _Source(upstream, auth, headers)
