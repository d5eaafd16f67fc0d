{#
    Use a folder's custom schema (staging, marts, snapshots, seeds) as the schema name itself,
    instead of dbt's default "<target schema>_<custom schema>", so the warehouse reads
    raw_shop -> staging -> marts. Nodes without a custom schema go to the target's schema.
#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
