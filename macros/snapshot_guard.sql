{#
    A snapshot's pre-hook: refuse to snapshot when the source came in (nearly) empty. If the live
    rows of `source_relation` dropped below (1 - max_drop) of the live current versions the
    snapshot holds, something upstream broke (an emptied table, a failed extract, a rule that
    quarantines everything), and snapshotting it would end-date or delete-flag every row. The
    build stops with an error naming both counts; after checking the source, override once
    with `--vars '{snapshot_guard_max_drop: 1}'`. Applies only once the snapshot holds at least
    `min_rows` live versions.
#}
{% macro snapshot_guard(source_relation, min_rows=10) -%}
    {%- if execute and flags.WHICH in ('build', 'snapshot') -%}
        {%- set max_drop = var('snapshot_guard_max_drop', 0.5) | float -%}
        {%- set existing = adapter.get_relation(database=this.database, schema=this.schema, identifier=this.identifier) -%}
        {%- if existing is not none -%}
            {%- set counts = run_query(
                "select (select count(*) from " ~ source_relation ~ " where not is_deleted) as live_now, "
                ~ "(select count(*) from " ~ this ~ " where dbt_valid_to is null and not is_deleted) as live_before"
            ) -%}
            {%- set live_now = counts.columns[0].values()[0] | int -%}
            {%- set live_before = counts.columns[1].values()[0] | int -%}
            {%- if live_before >= min_rows and live_now < live_before * (1 - max_drop) -%}
                {{ exceptions.raise_compiler_error(
                    "snapshot " ~ this ~ " refused: its source " ~ source_relation ~ " has " ~ live_now
                    ~ " live rows, the snapshot " ~ live_before ~ " live current versions (a drop of more than "
                    ~ (max_drop * 100) | round | int ~ "%). Check the source; if the drop is real, run once with "
                    ~ "--vars '{snapshot_guard_max_drop: 1}'."
                ) }}
            {%- endif -%}
        {%- endif -%}
    {%- endif -%}
    select 1
{%- endmacro %}
