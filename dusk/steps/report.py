"""The report step, a static HTML report: runs over time, rows per table, durations, tests, quarantine,
freshness, monitoring findings and what changed for readers (the data diff), from the run ledger.
One self-contained file (plots are inline SVG, nothing is fetched), rewritten by every run and by
``dusk report``."""

from __future__ import annotations

import io
import json
import logging
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from matplotlib import rc_context
from matplotlib.figure import Figure

from dusk import columns, ledger
from dusk.ledger import SCHEMA, Connection, LedgerError, Reading, open_ledger
from dusk.present import diff_headline, diff_rows, ledger_problems
from dusk.record import UNCHANGED, RelationDiff, RunResult
from dusk.settings import Settings

log = logging.getLogger(__name__)

RUNS_SHOWN = 60
STATUS_COLOURS = {"success": "#2e7d32", "partial": "#f9a825", "failed": "#c62828"}


def _svg(fig: Any) -> str:
    """``fig`` as inline SVG (no screen, no pyplot). Its text is SVG text in the reader's
    sans-serif, not each glyph's outline: smaller files whose text can be searched and copied, and
    less time to write (measured: a report of 32 runs 0.76 -> 0.66 s)."""
    buffer = io.StringIO()
    with rc_context({"svg.fonttype": "none"}):
        fig.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog: the SVG is inline in HTML


LABELLED_RUNS = 20
"""At most this many runs are labelled on a plot's time axis: 60 slanted labels overlapped at
this size, and laying them out was half of the report's time (measured: a plot with 60 of them
0.23 s to write, with 20 0.13 s; a night writes six). Unlabelled runs get no tick of their own
either: each is a bar or a marker already, and a tick per run was a seventh of the report's time
(measured with 32 runs: 0.83 -> 0.72 s)."""


def _run_axis(ax: Any, run_ids: list[str]) -> None:
    """Every ``n``-th run labelled on ``ax``'s x axis (the last run always)."""
    every = max(1, -(-len(run_ids) // LABELLED_RUNS))
    shown = list(range(len(run_ids) - 1, -1, -every))[::-1]
    labels = [f"{r[4:6]}-{r[6:8]} {r[9:11]}:{r[11:13]}" for r in (run_ids[i] for i in shown)]
    ax.set_xticks(shown, labels, rotation=60, ha="right", fontsize=7)


def _runs_plot(runs: list[tuple[str, str, float]]) -> str:
    fig = Figure(figsize=(9, 2.8))
    ax = fig.subplots()
    x = range(len(runs))
    ax.bar(x, [r[2] for r in runs], color=[STATUS_COLOURS.get(r[1], "#757575") for r in runs])
    _run_axis(ax, [r[0] for r in runs])
    ax.set_ylabel("seconds")
    ax.set_title("Runs over time (colour: success / partial / failed)")
    return _svg(fig)


def _lines_plot(series: dict[str, dict[str, float]], run_ids: list[str], title: str, ylabel: str) -> str:
    fig = Figure(figsize=(9, 3.2))
    ax = fig.subplots()
    for name in sorted(series):
        ax.plot(range(len(run_ids)), [series[name].get(r, 0) for r in run_ids], marker=".", label=name)
    _run_axis(ax, run_ids)
    ax.set_ylabel(ylabel)
    if any(v > 0 for s in series.values() for v in s.values()):
        ax.set_yscale("symlog")
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    if series:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _svg(fig)


def _tests_plot(counts: dict[str, dict[str, int]], run_ids: list[str]) -> str:
    fig = Figure(figsize=(9, 2.8))
    ax = fig.subplots()
    bottom = [0] * len(run_ids)
    outcomes = (("pass", "#2e7d32"), ("warn", "#f9a825"), ("fail", "#c62828"), ("error", "#6a1b9a"))
    for status, colour in (*outcomes, (UNCHANGED, "#b0bec5")):  # unchanged: passed on the same data before
        values = [counts.get(r, {}).get(status, 0) for r in run_ids]
        ax.bar(range(len(run_ids)), values, bottom=bottom, color=colour, label=status)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    _run_axis(ax, run_ids)
    ax.set_title("dbt tests per run (unchanged: not run, nothing they read changed)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _svg(fig)


def _durations_plot(steps: list[tuple[str, float]]) -> str:
    fig = Figure(figsize=(9, max(1.6, 0.35 * len(steps) + 0.8)))
    ax = fig.subplots()
    ax.barh([s[0] for s in steps], [s[1] for s in steps], color="#1565c0")
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("Durations in the last run (steps and the slowest dbt nodes)")
    return _svg(fig)


def _relation_diff(row: tuple[Any, ...]) -> RelationDiff:
    """A data diff row of the ledger (:func:`dusk.ledger.diff_of`) as the record holds it."""
    relation, status, key, before, after, added, removed, changed, columns, share, severity, error, schema = row
    reshaped = json.loads(schema) if schema else {}
    return RelationDiff(
        relation,
        key.split(", ") if key else None,
        before,
        after,
        int(added or 0),
        int(removed or 0),
        changed,
        json.loads(columns) if columns else {},
        reshaped.get("added", []),
        reshaped.get("removed", []),
        reshaped.get("retyped", []),
        max_changed_share=share,
        severity=severity or "warn",
        status=status,
        error=error,
    )


def gather(con: Connection) -> dict[str, Any]:
    """Everything the report shows, read from the ledger."""
    runs = ledger.recent_runs(con, RUNS_SHOWN)[::-1]
    if not runs:
        raise LedgerError("the run ledger holds no run yet (make run)")
    run_ids = [r[0] for r in runs]
    last = run_ids[-1]
    first = run_ids[0]
    rows: dict[str, dict[str, float]] = defaultdict(dict)
    for rid, source, table, loaded in con.execute(
        f"select run_id, source, table_name, loaded from {SCHEMA}.source_tables where run_id >= ?", [first]
    ).fetchall():
        rows[f"{source}.{table}"][rid] = loaded
    quarantine: dict[str, dict[str, float]] = defaultdict(dict)
    for rid, source, table, count in con.execute(
        f"select run_id, source, table_name, sum(row_count) from {SCHEMA}.quarantine "
        "where run_id >= ? group by 1, 2, 3",
        [first],
    ).fetchall():
        quarantine[f"{source}.{table}"][rid] = count
    tests: dict[str, dict[str, int]] = defaultdict(dict)
    for rid, status, count in con.execute(
        f"select run_id, status, count(*) from {SCHEMA}.dbt_nodes "
        "where run_id >= ? and resource_type in ('test', 'unit_test') group by 1, 2",
        [first],
    ).fetchall():
        tests[rid][status] = count
    steps = con.execute(
        f"select step || ' ' || coalesce(target, ''), seconds from {SCHEMA}.steps "
        "where run_id = ? order by seconds desc",
        [last],
    ).fetchall()
    slowest = con.execute(
        f"select 'dbt ' || name, seconds from {SCHEMA}.dbt_nodes where run_id = ? and resource_type != 'test' "
        "order by seconds desc limit 8",
        [last],
    ).fetchall()
    last_steps = ledger.steps_of(con, last)
    failing = ledger.failing_of(con, last)
    freshness = ledger.freshness_of(con, last)
    findings = ledger.findings_of(con, last)
    quarantine_now = ledger.quarantine_of(con, last)
    stale = [f for f in freshness if f[2] != "pass"]
    diffs = [_relation_diff(row) for row in ledger.diff_of(con, last)]
    changes: dict[str, dict[str, float]] = defaultdict(dict)
    for rid, relation, different in con.execute(
        f"select run_id, relation, coalesce(added, 0) + coalesce(removed, 0) + coalesce(changed, 0) "
        f"from {SCHEMA}.data_diff where run_id >= ? and status = 'compared'",
        [first],
    ).fetchall():
        changes[relation][rid] = different
    busiest = sorted(changes, key=lambda r: -sum(changes[r].values()))[:10]
    problems = ledger_problems(runs[-1], ledger.sources_of(con, last), failing, stale, findings)
    return {
        "runs": runs,
        "last": runs[-1],
        "plots": {
            "runs": _runs_plot([(r[0], r[1], r[2]) for r in runs]),
            "rows": _lines_plot(rows, run_ids, "Rows loaded per source table", "rows (symlog)"),
            "durations": _durations_plot([(s, float(t)) for s, t in steps + slowest]),
            "tests": _tests_plot(tests, run_ids),
            "quarantine": _lines_plot(quarantine, run_ids, "Rows in quarantine per table", "rows (symlog)"),
            "changes": _lines_plot(
                {r: changes[r] for r in busiest if any(changes[r].values())},
                run_ids,
                "Rows added, removed or changed for readers per night (the 10 busiest relations)",
                "rows (symlog)",
            ),
        },
        "diff_headline": diff_headline(diffs) if diffs else "",
        "diff_rows": diff_rows(diffs),
        "steps": last_steps,
        "problems": [(p.level, *p.text.partition("{}"), p.subject) for p in problems],
        "failing": failing,
        "freshness": freshness,
        "findings": findings,
        "quarantine_now": quarantine_now,
    }


TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dusk run report</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #212121; }
h1 { margin-bottom: 0; } .meta { color: #616161; margin-top: .3em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: 14px; }
th, td { border-bottom: 1px solid #e0e0e0; padding: 4px 10px; text-align: left; }
.status { font-weight: bold; } .success { color: #2e7d32; } .partial { color: #f57f17; } .failed { color: #c62828; }
.ok { color: #2e7d32; } .error, .fail, .failed { color: #c62828; } .warn { color: #f57f17; }
figure { margin: 1em 0; } svg { max-width: 100%; height: auto; }
</style></head>
<body>
<h1>dusk run report</h1>
<p class="meta">Written {{ written }} from {{ source.note }} ({{ source.where }}).</p>
<section id="last-run">
<h2>Last run <code>{{ last[0] }}</code>:
<span class="status {{ last[1] }}" id="last-status">{{ last[1] | upper }}</span> in {{ '%.1f' % last[2] }} s</h2>
{% if last[3] %}<p class="failed">Failed sources: {{ last[3] }}</p>{% endif %}
{% if last[4] %}<p class="failed">Error: {{ last[4] }}</p>{% endif %}
<table id="steps"><tr><th>step</th><th>target</th><th>status</th><th>attempts</th><th>seconds</th></tr>
{% for s in steps %}<tr><td>{{ s[0] }}</td><td>{{ s[1] or '' }}</td><td class="{{ s[2] }}">{{ s[2] }}</td>
<td>{{ s[3] or '' }}</td><td>{{ '%.1f' % s[4] }}</td></tr>{% endfor %}
</table>
</section>
<section id="what-happened"><h2>What happened</h2>
{% if problems %}<ul>{% for level, before, mark, after, subject in problems %}<li class="{{ level }}">{{ before }}
{%- if mark %}<code>{{ subject }}</code>{% endif %}{{ after }}</li>{% endfor %}</ul>
{% else %}<p>Every source loaded, every test passed, no finding.</p>{% endif %}
</section>
<section id="findings"><h2>Monitoring</h2>
{% if findings %}<table><tr><th>check</th><th>severity</th><th>target</th><th>finding</th></tr>
{% for f in findings %}<tr><td>{{ f[0] }}</td><td class="{{ f[1] }}">{{ f[1] }}</td><td>{{ f[2] }}</td>
<td>{{ f[3] }}</td></tr>{% endfor %}</table>
{% else %}<p>No volume anomaly, SLA breach or quarantine rate over the limit.</p>{% endif %}
</section>
<section id="tests"><h2>Tests</h2>
{% if failing %}<table><tr><th>node</th><th>type</th><th>status</th><th>failing rows</th><th>rows kept in</th>
<th>message</th></tr>
{% for n in failing %}<tr><td>{{ n[0] }}</td><td>{{ n[1] }}</td><td class="{{ n[2] }}">{{ n[2] }}</td>
<td>{{ n[3] if n[3] is not none else '' }}</td><td>{{ n[4] or '' }}</td><td>{{ (n[5] or '')[:200] }}</td></tr>
{% endfor %}</table>{% else %}<p>Every test of the last run passed.</p>{% endif %}
<figure>{{ plots.tests }}</figure>
</section>
<section id="changes"><h2>What changed for readers</h2>
{% if diff_headline %}<p>{{ diff_headline }}.</p>{% else %}<p>The last run compared nothing (it was not
published, or the data diff is off).</p>{% endif %}
{% if diff_rows %}<table id="diff"><tr><th>relation</th><th>rows before</th><th>after</th><th>added</th>
<th>removed</th><th>changed</th><th>share</th><th>columns changed</th></tr>
{% for d in diff_rows %}<tr>{% for cell in d %}<td>{{ cell }}</td>{% endfor %}</tr>{% endfor %}</table>{% endif %}
<figure>{{ plots.changes }}</figure>
</section>
<section id="origins"><h2>Where mart columns come from</h2>
{% if origins %}<p>Each mart column and the raw columns it derives from, traced from dbt's compiled SQL
(<code>#</code>: hashed on the way; <code>?</code>: only decides the value, in a condition). The same
as JSON: <code>lineage/columns.json</code> in the data dir.</p>
{% for relation, rows in origins %}<details><summary>{{ relation }}</summary><table class="origins">
<tr><th>column</th><th>derives from</th></tr>
{% for column, found in rows %}<tr><td>{{ column }}</td><td>{{ found }}</td></tr>{% endfor %}
</table></details>{% endfor %}{% else %}<p>No column lineage yet (the audit traces it after a build).</p>{% endif %}
</section>
<section id="runs"><h2>Runs over time</h2><figure>{{ plots.runs }}</figure></section>
<section id="rows"><h2>Rows per table</h2><figure>{{ plots.rows }}</figure></section>
<section id="durations"><h2>Durations</h2><figure>{{ plots.durations }}</figure></section>
<section id="quarantine"><h2>Quarantine</h2>
{% if quarantine_now %}<table><tr><th>source</th><th>table</th><th>reason</th><th>rows</th></tr>
{% for q in quarantine_now %}<tr><td>{{ q[0] }}</td><td>{{ q[1] }}</td><td>{{ q[2] }}</td><td>{{ q[3] }}</td></tr>
{% endfor %}</table>{% else %}<p>No row in quarantine.</p>{% endif %}
<figure>{{ plots.quarantine }}</figure>
</section>
<section id="freshness"><h2>Freshness (last run)</h2>
<table><tr><th>source</th><th>table</th><th>status</th></tr>
{% for f in freshness %}<tr><td>{{ f[0] }}</td><td>{{ f[1] }}</td><td class="{{ f[2] }}">{{ f[2] }}</td></tr>
{% endfor %}</table>
</section>
<section id="history"><h2>Recent runs</h2>
<table><tr><th>run</th><th>status</th><th>seconds</th><th>failed sources</th><th>error</th></tr>
{% for r in runs | reverse %}<tr><td>{{ r[0] }}</td><td class="{{ r[1] }}">{{ r[1] }}</td>
<td>{{ '%.1f' % r[2] }}</td><td>{{ r[3] or '' }}</td><td>{{ (r[4] or '')[:160] }}</td></tr>{% endfor %}
</table></section>
</body></html>
"""


def column_origins(settings: Settings) -> list[tuple[str, list[tuple[str, str]]]]:
    """Per mart (the ``marts`` schema), each column and the raw columns it derives from, from the
    column-level lineage the audit kept (``#`` after a hashed one, ``?`` after one that only
    decides the value, in a condition); empty before the first audit."""
    traced = columns.load(settings.column_lineage_path)
    shown = []
    for relation in sorted(r for r in traced if r.startswith("marts.")):
        rows = []
        for column in sorted(traced[relation].columns):
            found = sorted(columns.to_sources(traced, relation, column))
            marks = [f"{o.relation}.{o.column}{'#' if o.hashed else ''}{'?' if o.condition else ''}" for o in found]
            rows.append((column, ", ".join(marks) or "(computed)"))
        if traced[relation].error:
            rows.append(("(not traced)", traced[relation].error or ""))
        shown.append((relation, rows))
    return shown


def write_report(settings: Settings, con: Connection | None = None) -> Path:
    """Write the report to ``settings.report_path`` (atomically) and return the path; ``con``:
    the night's own connection (else the ledger is opened read-only)."""
    if con is not None:
        data = gather(con)
        source = Reading(settings.warehouse_label, "warehouse")
    else:
        with open_ledger(settings) as (reader, source):
            data = gather(reader)
    data["origins"] = column_origins(settings)
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    plots = {k: jinja2.utils.markupsafe.Markup(v) for k, v in data.pop("plots").items()}
    html = env.from_string(TEMPLATE).render(
        **data, plots=plots, source=source, written=f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC"
    )
    path = settings.report_path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(path)
    log.info("report written to %s", path)
    return path


def report(settings: Settings, con: Connection, record: RunResult) -> None:
    """The report step: the report is a view of the ledger; its failure never fails the night."""
    try:
        record.report_path = write_report(settings, con)
    except Exception as exc:
        log.exception("report not written")
        record.report_error = str(exc)
