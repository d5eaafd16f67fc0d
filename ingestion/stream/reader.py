"""The NATS JetStream side of a stream source: connect, bind the durable consumer, fetch a batch,
acknowledge it once loaded."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import dlt
import nats
import nats.errors
import pyarrow as pa
from nats.aio.msg import Msg
from nats.js import api as js_api
from nats.js.errors import NotFoundError

from ingestion.declaration import SourceSpec, TableSpec
from ingestion.stream.decode import decode, distinct_keys

log = logging.getLogger(__name__)


CONNECT_TIMEOUT = 2.0
T = TypeVar("T")


class StreamUnreachable(RuntimeError):
    """The stream cannot be read: NATS unreachable, or (an optional source) the stream not created
    yet; an optional source is skipped then."""


def safe_servers(servers: str) -> str:
    """The server URL(s) without user or password, for messages."""
    parts = []
    for server in servers.split(","):
        url = urlsplit(server.strip())
        host = url.hostname or ""
        netloc = f"{host}:{url.port}" if url.port else host
        parts.append(urlunsplit((url.scheme, netloc, url.path, "", "")))
    return ",".join(parts)


def servers_for(spec: SourceSpec) -> str:
    """The NATS server(s): dlt secrets/env (``SOURCES__<NAME>__SERVERS``, may hold credentials)
    over sources.yml."""
    configured: Any = dlt.secrets.get(f"sources.{spec.name}.servers")
    return str(configured or spec.option("servers"))


async def connect(servers: str) -> Any:
    """A NATS connection that fails within seconds when the server is not there (nats-py
    retries the first connection forever unless ``max_reconnect_attempts`` > 0)."""
    return await asyncio.wait_for(
        nats.connect(
            servers,
            connect_timeout=CONNECT_TIMEOUT,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0.2,
            error_cb=_quiet,
        ),
        timeout=3 * CONNECT_TIMEOUT,
    )


class _Loop:
    """An asyncio loop in a thread of its own: the NATS connection stays served (pings, acks)
    while the synchronous dlt load runs."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="nats", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.run(_cancel_tasks(), timeout=5)  # the client's reader/flusher tasks end cleanly
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


@dataclass
class Batch:
    """One run's messages and what became of them."""

    messages: list[Msg] = field(default_factory=list)
    tables: dict[str, TableSpec] = field(default_factory=dict)
    """Each table as this batch loads it (an inferred one with the fields it brought new)."""
    rows: dict[str, pa.Table] = field(default_factory=dict)
    quarantine: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Fields of the messages that are not declared (they land in raw as text)."""
    repeats: dict[str, int] = field(default_factory=dict)
    """Per table, good messages whose key another good message of the batch has (merged into one)."""


class StreamReader:
    """A connection to the source's stream and its durable consumer, for one run."""

    def __init__(self, spec: SourceSpec) -> None:
        self.spec = spec
        self.servers = servers_for(spec)
        self._loop = _Loop()
        self._nc: Any = None
        self._subs: dict[str, Any] = {}

    def open(self) -> StreamReader:
        """Connect and bind the consumers; raises StreamUnreachable (and cleans up) when the
        server or, for an optional source, the stream is not there."""
        try:
            self._loop.run(self._connect())
        except BaseException:
            self.close()
            raise
        return self

    def __enter__(self) -> StreamReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._nc is not None:
            with contextlib.suppress(Exception):  # closing after a failure must not hide it
                self._loop.run(self._nc.close(), timeout=10)
            self._nc = None
        self._loop.close()

    async def _release_dead_fetches(self, js: Any, stream: str, durable: str, config: Any) -> None:
        """Messages a killed run fetched but never acknowledged would come back only after
        ``ack_wait``, so a rerun right after the kill would miss them. The run lock says no other
        run is consuming: recreate the durable consumer from its ack floor, which delivers them
        again now (a message acknowledged past the floor comes again too; the merge on the key
        absorbs it)."""
        try:
            info = await js.consumer_info(stream, durable)
        except NotFoundError:
            return
        if not info.num_ack_pending:
            return
        start = int(info.ack_floor.stream_seq) + 1
        log.warning(
            "source=%s consumer %s: %d message(s) fetched by a run that died; delivering them again from "
            "stream sequence %d",
            self.spec.name,
            durable,
            info.num_ack_pending,
            start,
        )
        await js.delete_consumer(stream, durable)
        config.deliver_policy = js_api.DeliverPolicy.BY_START_SEQUENCE
        config.opt_start_seq = start

    async def _connect(self) -> None:
        where = f"source {self.spec.name!r}"
        try:
            self._nc = await connect(self.servers)
        except (OSError, nats.errors.Error, TimeoutError) as exc:
            raise StreamUnreachable(
                f"{where}: NATS at {safe_servers(self.servers)} is not reachable ({type(exc).__name__}: {exc})"
            ) from None
        js = self._nc.jetstream()
        stream = str(self.spec.option("stream"))
        try:
            await js.stream_info(stream)
        except NotFoundError:
            message = f"{where}: JetStream stream {stream!r} does not exist on {safe_servers(self.servers)}"
            if self.spec.optional:  # e.g. the demo's: its simulator creates it with its first events
                raise StreamUnreachable(message + " yet") from None
            raise RuntimeError(message) from None
        for table in self.spec.tables:
            config = js_api.ConsumerConfig(
                ack_policy=js_api.AckPolicy.EXPLICIT,
                ack_wait=float(self.spec.option("ack_wait")),
                max_ack_pending=-1,
                deliver_policy=js_api.DeliverPolicy.ALL,
            )
            durable = f"{self.spec.option('durable') or 'dusk_' + self.spec.name}_{table.name}"
            await self._release_dead_fetches(js, stream, durable, config)
            self._subs[table.name] = await js.pull_subscribe(
                table.subject, durable=durable, stream=stream, config=config
            )

    def fetch(self) -> Batch:
        """Everything pending for every table, up to ``max_messages`` a table."""
        batch = Batch()
        for table in self.spec.tables:
            messages = self._loop.run(self._fetch(table))
            batch.messages.extend(messages)
            batch.tables[table.name], rows, bad, notes = decode(table, messages)
            batch.rows[table.name] = rows
            batch.repeats[table.name] = rows.num_rows - distinct_keys(rows, table)
            batch.quarantine.extend(bad)
            batch.notes.extend(notes)
        return batch

    async def _fetch(self, table: TableSpec) -> list[Msg]:
        sub = self._subs[table.name]
        size, limit = int(self.spec.option("batch_size")), int(self.spec.option("max_messages"))
        timeout = float(self.spec.option("fetch_timeout"))
        # what the consumer has to give now (new, or delivered before and not acknowledged):
        # fetching stops there instead of waiting ``fetch_timeout`` out on an empty stream
        # (a quiet night's second on every table); what arrives meanwhile is the next run's
        info = await sub.consumer_info()
        limit = min(limit, (info.num_pending or 0) + (info.num_ack_pending or 0))
        messages: list[Msg] = []
        while len(messages) < limit:
            try:
                got = await sub.fetch(min(size, limit - len(messages)), timeout=timeout)
            except (nats.errors.TimeoutError, TimeoutError):
                # nothing more within the timeout (on a loaded machine nats-py lets asyncio's own
                # TimeoutError through): what was not fetched stays in the stream for the next run
                break
            messages.extend(got)
        return messages

    def ack(self, batch: Batch) -> None:
        """Acknowledge the batch (after its load committed). The acks are flushed to the server;
        one lost on the way only means a redelivery, which the merge absorbs."""
        self._loop.run(self._each(batch.messages, "ack"), timeout=300)

    def nak(self, batch: Batch) -> None:
        """Ask for prompt redelivery of a batch that did not load."""
        self._loop.run(self._each(batch.messages, "nak"), timeout=300)

    async def _each(self, messages: list[Msg], method: str) -> None:
        for message in messages:
            await getattr(message, method)()
        await self._nc.flush(timeout=60)


async def _cancel_tasks() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _quiet(exc: Exception) -> None:
    """nats-py's error callback: the failure is raised to the caller, who reports it once."""
