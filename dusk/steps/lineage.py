"""The night's lineage as OpenLineage run events, through the official ``openlineage-python``
client: a START and a COMPLETE (or FAIL) event for the night, for each source's ingestion and
for each dbt node that ran, each naming the datasets it read and wrote, with their columns
(the schema facet), the rows a source loaded (output statistics) and the outcome of dbt's tests
on what they read (data quality assertions).

By default the events go to a file per night, ``<data dir>/lineage/<run id>.jsonl`` (one JSON
event per line, the client's file transport); with an OpenLineage URL (Marquez or any
compatible receiver) they are sent there by HTTP instead. Lineage never fails a night: a
receiver that refuses is named in the run record's ``lineage`` field, and no further event is
sent that night.

Names (OpenLineage's naming conventions where one fits):

- jobs, in the namespace ``dusk`` (``dusk-<env>`` outside prod): ``night``, ``ingest.<source>``
  and ``dbt.<resource type>.<name>``; each run's ``parent`` facet is the night's run;
- warehouse datasets: ``duckdb://<file>`` with ``<schema>.<table>``; ``postgres://<host>:<port>``
  with ``<database>.<schema>.<table>``; ``iceberg://<catalog>`` with ``<namespace>.<table>``;
- source datasets: ``<kind>://<source>`` (``database://shop``) with the table's name: the
  connection strings hold secrets and are never put in an event.

Run ids are derived from the night's id and the job, so a night's events name the same runs
whenever they are sent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    column_lineage_dataset,
    data_quality_assertions_dataset,
    error_message_run,
    job_type_job,
    output_statistics_output_dataset,
    parent_run,
    schema_dataset,
)
from openlineage.client.transport.file import FileConfig, FileTransport
from openlineage.client.transport.http import ApiKeyTokenProvider, HttpConfig, HttpTransport
from openlineage.client.transport.http_common import DEFAULT_RETRY_CONFIG
from openlineage.client.uuid import generate_static_uuid

from dusk import columns as column_lineage
from dusk.record import UNCHANGED, NodeResult, RunResult
from dusk.settings import PROD, Settings
from dusk.warehouse import column_types
from ingestion.declaration import SourceSpec

log = logging.getLogger(__name__)

PRODUCER = "urn:dusk:runner"
"""The ``producer`` of every event: what wrote it (a URI, as the spec asks)."""
HTTP_TIMEOUT = 5.0
BUILT = ("model", "snapshot", "seed")


@dataclass(frozen=True)
class Relation:
    """A table or view in the warehouse: its schema, its name, and dbt's declared columns (for an
    engine whose columns are not read, Spark)."""

    schema: str
    name: str
    declared: tuple[tuple[str, str | None], ...] = ()


def lineage(settings: Settings, con: Any, record: RunResult, specs: dict[str, SourceSpec], ended_at: datetime) -> str:
    """Emit the night's events; what happened, in one line (also the run record's ``lineage``)."""
    if settings.lineage_dir is None and settings.openlineage_url is None:
        return "off"
    manifest = _manifest(settings.target_path / "manifest.json")
    traced = column_lineage.load(settings.column_lineage_path)
    events = list(night_events(settings, record, specs, manifest, _columns_of(con), ended_at, traced))
    try:
        transport, where = _transport(settings, record.run_id)
    except OSError as exc:
        log.warning("lineage: %s", exc)
        return f"not written ({exc.strerror or exc})"
    client = OpenLineageClient(transport=transport)
    sent = 0
    try:
        for event in events:
            client.emit(event)
            sent += 1
    except Exception as exc:  # the receiver is down or refuses: the night goes on, named
        log.warning("lineage: %d of %d events sent to %s, then %s", sent, len(events), where, type(exc).__name__)
        return f"{sent} of {len(events)} events sent to {where}, then {type(exc).__name__}"
    finally:
        client.close()
    return f"{sent} events {'written to' if settings.openlineage_url is None else 'sent to'} {where}"


def _transport(settings: Settings, run_id: str) -> tuple[Any, str]:
    """The client's transport and where it sends, for people (a URL's host only)."""
    if settings.openlineage_url is not None:
        parts = urlsplit(settings.openlineage_url)
        auth = ApiKeyTokenProvider({"apiKey": settings.openlineage_api_key}) if settings.openlineage_api_key else None
        # two attempts, not the client's five with backoff: a night sends hundreds of events
        retry = {**DEFAULT_RETRY_CONFIG, "total": 1, "read": 1, "connect": 1}
        config = HttpConfig(url=settings.openlineage_url, timeout=HTTP_TIMEOUT, retry=retry)
        if auth is not None:
            config.auth = auth
        return HttpTransport(config), f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    assert settings.lineage_dir is not None
    settings.lineage_dir.mkdir(parents=True, exist_ok=True)
    path = settings.lineage_dir / f"{run_id}.jsonl"
    path.unlink(missing_ok=True)  # a night emits its events once
    return FileTransport(FileConfig(log_file_path=str(path), append=True)), str(path)


def _manifest(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        log.warning("lineage: no dbt manifest at %s; the dbt nodes' events are left out", path)
        return {}


def _columns_of(con: Any) -> Callable[[Relation], list[tuple[str, str | None]]]:
    """Reads a relation's columns and types from the warehouse; on Spark (no information schema,
    a DESCRIBE per table) dbt's declared columns are used instead."""
    spark = callable(getattr(con, "tables", None))
    read: dict[tuple[str, str], list[tuple[str, str | None]]] = {}  # a relation is read by many nodes

    def columns(relation: Relation) -> list[tuple[str, str | None]]:
        if spark or con is None:
            return list(relation.declared)
        key = (relation.schema, relation.name)
        if key not in read:
            read[key] = list(column_types(con, relation.schema, relation.name).items())
        return read[key]

    return columns


def namespaces(settings: Settings) -> tuple[str, str, str]:
    """The jobs' namespace, the warehouse datasets' namespace, and the prefix of their names."""
    jobs = "dusk" if settings.env == PROD else f"dusk-{settings.env}"
    if settings.target == "postgres":
        pg = settings.postgres
        return jobs, f"postgres://{pg.host}:{pg.port}", f"{pg.database}."
    if settings.target == "spark":
        return jobs, f"iceberg://{settings.spark.catalog_name}", ""
    return jobs, f"duckdb://{settings.warehouse}", ""


def night_events(
    settings: Settings,
    record: RunResult,
    specs: dict[str, SourceSpec],
    manifest: dict[str, Any],
    columns: Callable[[Relation], list[tuple[str, str | None]]],
    ended_at: datetime,
    traced: dict[str, column_lineage.Traced] | None = None,
) -> Iterator[RunEvent]:
    """The night's events in time order of their runs: the night's START, each source's and each
    dbt node's START and end, the night's end. ``traced``: the column-level lineage the audit
    kept, given to each model's output as the ``columnLineage`` facet."""
    jobs, warehouse, prefix = namespaces(settings)
    night_job = Job(namespace=jobs, name="night", facets={"jobType": _job_type("JOB")})
    night_run = _run_id(record.run_id, "night", record.started_at)
    parent = parent_run.ParentRunFacet(
        run=parent_run.Run(runId=night_run), job=parent_run.Job(namespace=jobs, name="night")
    )
    failed = record.status in ("failed", "stopped")
    yield _event(RunState.START, record.started_at, night_run, night_job)

    def dataset(relation: Relation, output: bool, facets: dict[str, Any] | None = None) -> Any:
        found = columns(relation)
        fields = [schema_dataset.SchemaDatasetFacetFields(name=n, type=t) for n, t in found]
        kind = OutputDataset if output else InputDataset
        made = kind(namespace=warehouse, name=f"{prefix}{relation.schema}.{relation.name}")
        made.facets = {"schema": schema_dataset.SchemaDatasetFacet(fields=fields)} if fields else {}
        made.facets.update(facets or {})
        origins = (traced or {}).get(f"{relation.schema}.{relation.name}".lower()) if output else None
        if origins is not None and origins.columns:
            made.facets["columnLineage"] = _column_lineage(origins, warehouse, prefix)
        return made

    for source in record.sources:
        if source.skipped:
            continue
        spec = specs.get(source.source)
        start = source.started_at or record.started_at
        job = Job(namespace=jobs, name=f"ingest.{source.source}", facets={"jobType": _job_type("TASK")})
        run_id = _run_id(record.run_id, job.name, start)
        inputs = [
            InputDataset(namespace=f"{spec.kind if spec else 'source'}://{source.source}", name=t.table)
            for t in source.tables
        ]
        outputs = [
            dataset(
                Relation(spec.dataset if spec else f"raw_{source.source}", t.table),
                output=True,
                facets={},
            )
            for t in source.tables
        ]
        for out, t in zip(outputs, source.tables, strict=True):
            out.outputFacets = {
                "outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                    rowCount=t.loaded
                )
            }
        yield _event(RunState.START, start, run_id, job, parent, inputs=inputs)
        end = start + timedelta(seconds=source.seconds)
        state = RunState.COMPLETE if source.ok else RunState.FAIL
        yield _event(state, end, run_id, job, parent, inputs, outputs, error=source.error)

    if record.dbt is not None and manifest:
        yield from _dbt_events(record, manifest, jobs, parent, dataset)

    end_state = RunState.FAIL if failed else RunState.COMPLETE
    yield _event(end_state, ended_at, night_run, night_job, error=record.error)


def _dbt_events(
    record: RunResult,
    manifest: dict[str, Any],
    jobs: str,
    parent: parent_run.ParentRunFacet,
    dataset: Callable[..., Any],
) -> Iterator[RunEvent]:
    """A START and an end per dbt node that ran tonight (not those left ``unchanged``)."""
    assert record.dbt is not None
    nodes = {**manifest.get("nodes", {}), **manifest.get("unit_tests", {})}
    sources = manifest.get("sources", {})
    tests = _tests_by_relation(record.dbt.nodes, nodes)
    for result in record.dbt.nodes:
        node = nodes.get(result.unique_id)
        if node is None or result.status == UNCHANGED:
            continue
        start = result.started_at or record.started_at
        name = f"dbt.{result.resource_type}.{result.name}"
        job = Job(namespace=jobs, name=name, facets={"jobType": _job_type(result.resource_type.upper(), "DBT")})
        run_id = _run_id(record.run_id, name, start)
        inputs = []
        for parent_id in (node.get("depends_on") or {}).get("nodes") or []:
            upstream = _relation(nodes.get(parent_id) or sources.get(parent_id))
            if upstream is not None:
                facets = {"dataQualityAssertions": tests[parent_id]} if parent_id in tests else {}
                inputs.append(dataset(upstream, output=False, facets=facets))
        own = _relation(node) if result.resource_type in BUILT else None
        outputs = [dataset(own, output=True)] if own is not None else []
        yield _event(RunState.START, start, run_id, job, parent, inputs=inputs)
        end = result.completed_at or start + timedelta(seconds=result.seconds)
        ok = result.status in ("success", "pass", "warn")
        yield _event(
            RunState.COMPLETE if ok else RunState.FAIL, end, run_id, job, parent, inputs, outputs, error=result.message
        )


def _column_lineage(
    traced: column_lineage.Traced, namespace: str, prefix: str
) -> column_lineage_dataset.ColumnLineageDatasetFacet:
    """Each output column's direct origins: DIRECT (its value passes, ``masking`` when hashed) or
    INDIRECT/CONDITIONAL (it only decides the value)."""
    fields = {}
    for column, origins in sorted(traced.columns.items()):
        fields[column] = column_lineage_dataset.Fields(
            inputFields=[
                column_lineage_dataset.InputField(
                    namespace=namespace,
                    name=f"{prefix}{o.relation}",
                    field=o.column,
                    transformations=[
                        column_lineage_dataset.Transformation(
                            type="INDIRECT" if o.condition else "DIRECT",
                            subtype="CONDITIONAL" if o.condition else "TRANSFORMATION",
                            masking=o.hashed,
                        )
                    ],
                )
                for o in origins
            ]
        )
    return column_lineage_dataset.ColumnLineageDatasetFacet(fields=fields)


def _tests_by_relation(
    results: list[NodeResult], nodes: dict[str, Any]
) -> dict[str, data_quality_assertions_dataset.DataQualityAssertionsDatasetFacet]:
    """Per model or source unique id, tonight's data tests on it and whether each passed."""
    found: dict[str, list[data_quality_assertions_dataset.Assertion]] = {}
    for result in results:
        node = nodes.get(result.unique_id) or {}
        if result.resource_type != "test" or result.status == UNCHANGED:
            continue
        attached = node.get("attached_node") or next(iter((node.get("depends_on") or {}).get("nodes") or []), None)
        if attached is None:
            continue
        assertion = data_quality_assertions_dataset.Assertion(
            assertion=result.name,
            success=result.status in ("pass", "warn"),
            column=node.get("column_name"),
        )
        found.setdefault(attached, []).append(assertion)
    return {
        unique_id: data_quality_assertions_dataset.DataQualityAssertionsDatasetFacet(assertions=assertions)
        for unique_id, assertions in found.items()
    }


def _relation(node: dict[str, Any] | None) -> Relation | None:
    """The relation a manifest node (model, snapshot, seed, source) is, with its declared columns;
    None for what has none (a test, an ephemeral model)."""
    if not node or node.get("resource_type") not in (*BUILT, "source"):
        return None
    if (node.get("config") or {}).get("materialized") == "ephemeral":
        return None
    name = node.get("identifier") if node["resource_type"] == "source" else node.get("alias")
    declared = tuple((c, (v or {}).get("data_type")) for c, v in (node.get("columns") or {}).items())
    return Relation(schema=str(node["schema"]), name=str(name or node["name"]), declared=declared)


def _job_type(kind: str, integration: str = "DUSK") -> job_type_job.JobTypeJobFacet:
    return job_type_job.JobTypeJobFacet(processingType="BATCH", integration=integration, jobType=kind)


def _run_id(night: str, job: str, start: datetime) -> str:
    return str(generate_static_uuid(instant=_utc(start), data=f"{night}/{job}".encode()))


def _utc(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _event(
    state: RunState,
    at: datetime,
    run_id: str,
    job: Job,
    parent: parent_run.ParentRunFacet | None = None,
    inputs: list[InputDataset] | None = None,
    outputs: list[OutputDataset] | None = None,
    error: str | None = None,
) -> RunEvent:
    facets: dict[str, Any] = {"parent": parent} if parent is not None else {}
    if state == RunState.FAIL and error:
        facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(message=error, programmingLanguage="PYTHON")
    return RunEvent(
        eventType=state,
        eventTime=_utc(at).isoformat(),
        run=Run(runId=run_id, facets=facets),
        job=job,
        inputs=inputs or [],
        outputs=outputs or [],
        producer=PRODUCER,
    )
