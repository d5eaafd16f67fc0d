{#
    A raw timestamp (dlt stores every timestamp as `timestamp with time zone`) as a plain
    timestamp in UTC, whatever the session's time zone: a bare cast would convert to the time
    zone of the machine (DuckDB) or the server (PostgreSQL) that runs dbt.
#}
{% macro to_utc(column) -%}
    {{ return(adapter.dispatch('to_utc', 'dusk')(column)) }}
{%- endmacro %}

{% macro default__to_utc(column) -%}
    cast(({{ column }}) at time zone 'UTC' as timestamp)
{%- endmacro %}

{# Spark keeps timestamps as instants and the runner's session time zone is UTC (spark.sql.session.timeZone) #}
{% macro spark__to_utc(column) -%}
    cast(({{ column }}) as timestamp)
{%- endmacro %}
