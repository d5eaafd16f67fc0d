{#
    Keep one row per key: the first by `order_by` (e.g. the latest version). Portable (a
    window function in a subquery, no QUALIFY) so the project runs on DuckDB and Postgres.
    The helper column `dedupe_rank` is left for the caller to drop by listing its columns.
#}
{% macro deduplicate(relation, partition_by, order_by) -%}
    select ranked.*
    from (
        select
            numbered.*,
            row_number() over (
                partition by {{ partition_by }}
                order by {{ order_by }}
            ) as dedupe_rank
        from {{ relation }} as numbered
    ) as ranked
    where ranked.dedupe_rank = 1
{%- endmacro %}
