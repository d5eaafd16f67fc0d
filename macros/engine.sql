{#
    The type of an 8-byte float: `double precision` is standard SQL (DuckDB, PostgreSQL), Spark
    knows it as `double`.
#}
{% macro double() -%}
    {{ return(adapter.dispatch('double', 'dusk')()) }}
{%- endmacro %}

{% macro default__double() -%}
    double precision
{%- endmacro %}

{% macro spark__double() -%}
    double
{%- endmacro %}


{#
    The raw column in which a files source keeps each row's landing file: `_file`, or
    `_source_file` on Spark, where Iceberg reserves `_file` for a metadata column.
#}
{% macro file_column() -%}
    {{ return(adapter.dispatch('file_column', 'dusk')()) }}
{%- endmacro %}

{% macro default__file_column() -%}
    _file
{%- endmacro %}

{% macro spark__file_column() -%}
    _source_file
{%- endmacro %}


{#
    A pre-hook for every model: on Spark, drop the view a model leaves behind when it becomes a
    table. dbt-spark lists a schema with `show tables`, which on Iceberg leaves views out, so it
    neither drops the view nor sees it, and Iceberg refuses to create the table over it ("View
    with same name already exists"). A table dbt does not see may be such a view: `drop view if
    exists` is a no-op on a table and on nothing. No statement everywhere else.
#}
{% macro drop_view_becoming_table() -%}
    {{ return(adapter.dispatch('drop_view_becoming_table', 'dusk')()) }}
{%- endmacro %}

{% macro default__drop_view_becoming_table() -%}
{%- endmacro %}

{% macro spark__drop_view_becoming_table() -%}
    {%- if execute and config.get('materialized') in ('table', 'incremental') -%}
        {%- if adapter.get_relation(database=this.database, schema=this.schema, identifier=this.identifier) is none -%}
            drop view if exists {{ this }}
        {%- endif -%}
    {%- endif -%}
{%- endmacro %}
