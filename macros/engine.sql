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
