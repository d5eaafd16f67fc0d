{#
    dbt's not_null test on Spark: with store_failures dbt keeps `select *` of the failing rows, and
    Iceberg refuses to create a table with a column named like one of its metadata columns (a
    file source's `_file`). On Spark the failing rows keep the tested column only.
#}
{% macro spark__test_not_null(model, column_name) %}

select {{ column_name }}
from {{ model }}
where {{ column_name }} is null

{% endmacro %}
