{#
    dbt-spark 1.11's snapshot with a composite unique_key (a list) adds dbt's helper columns
    `dbt_unique_key_1..n` of the staging view to the snapshot table, and its merge (`insert *`)
    then finds them twice ("ambiguous reference") on the next night. dbt's default materialization
    leaves them out; these two overrides do the same on Spark: the columns are never added, and
    the merge inserts the snapshot's own columns by name.
#}
{% macro spark__create_columns(relation, columns) %}
    {%- set added = [] -%}
    {%- for column in columns if not modules.re.match('^dbt_unique_key_[0-9]+$', column.name, modules.re.I) -%}
        {%- do added.append(column) -%}
    {%- endfor -%}
    {% if added | length > 0 %}
    {% call statement() %}
      alter table {{ relation }} add columns (
        {% for column in added %}
          `{{ column.name }}` {{ column.data_type }} {{- ',' if not loop.last -}}
        {% endfor %}
      );
    {% endcall %}
    {% endif %}
{% endmacro %}


{% macro spark__snapshot_merge_sql(target, source, insert_cols) -%}
    {%- set columns = config.get("snapshot_table_column_names") or get_snapshot_table_column_names() -%}
    {%- set inserted = [] -%}
    {%- for column in insert_cols if not modules.re.match('^`?dbt_unique_key_[0-9]+`?$', column, modules.re.I) -%}
        {%- do inserted.append(column) -%}
    {%- endfor -%}

    merge into {{ target }} as DBT_INTERNAL_DEST
    {% if target.is_iceberg %}
      using {{ source.identifier }} as DBT_INTERNAL_SOURCE
    {% else %}
      using {{ source }} as DBT_INTERNAL_SOURCE
    {% endif %}
    on DBT_INTERNAL_SOURCE.{{ columns.dbt_scd_id }} = DBT_INTERNAL_DEST.{{ columns.dbt_scd_id }}
    when matched
     {% if config.get("dbt_valid_to_current") %}
       and ( DBT_INTERNAL_DEST.{{ columns.dbt_valid_to }} = {{ config.get('dbt_valid_to_current') }} or
             DBT_INTERNAL_DEST.{{ columns.dbt_valid_to }} is null )
     {% else %}
       and DBT_INTERNAL_DEST.{{ columns.dbt_valid_to }} is null
     {% endif %}
     and DBT_INTERNAL_SOURCE.dbt_change_type in ('update', 'delete')
        then update
        set {{ columns.dbt_valid_to }} = DBT_INTERNAL_SOURCE.{{ columns.dbt_valid_to }}

    when not matched
     and DBT_INTERNAL_SOURCE.dbt_change_type = 'insert'
        then insert ({{ inserted | join(', ') }})
        values ({% for column in inserted %}DBT_INTERNAL_SOURCE.{{ column }}{{ ', ' if not loop.last }}{% endfor %})
    ;
{% endmacro %}
