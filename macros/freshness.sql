{#
    A source table's freshness, for `loaded_at_query`: when dusk last read its source
    successfully (that run's start, from the run ledger), whether or not the read found changes.
    A quiet table read every night is fresh; a source that fails, or nights that stop, make it
    stale. (The newest `_dlt_load_id` on the rows would say when rows last *changed*, which
    failed healthy nights for tables that simply had no changes.) Rendered by dbt when the
    freshness check runs, with `source_node` the source table being checked.
#}
{% macro extracted_at() -%}
    select max(runs.started_at)
    from dusk_ledger.runs as runs
    inner join dusk_ledger.steps as steps
        on runs.run_id = steps.run_id
    where
        steps.step = 'ingest'
        and steps.status = 'ok'
        and steps.target = '{{ source_node.source_name }}'
{%- endmacro %}
