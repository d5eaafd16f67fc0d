{#
    Reconciliation: fails unless the rows of the model (optionally filtered by `model_where`)
    equal the sum of the rows of `parts`, a list of `{relation: ..., where: ...}` (e.g. raw =
    staged + quarantined). Relations are given as `"{{ ref('...') }}"` strings.
#}
{% test rowcount_reconciles(model, parts, model_where=none) %}

with

expected as (

    select count(*) as row_count
    from {{ model }}
    {%- if model_where %}
        where {{ model_where }}
    {%- endif %}

),

part_rows as (

    {%- for part in parts %}
        select count(*) as row_count
        from {{ part['relation'] }}
        {%- if part.get('where') %}
            where {{ part['where'] }}
        {%- endif %}
        {%- if not loop.last %}
            union all
        {%- endif %}
    {%- endfor %}

),

reconciled as (

    select sum(row_count) as row_count
    from part_rows

)

select
    expected.row_count as expected_row_count,
    reconciled.row_count as parts_row_count
from expected
cross join reconciled
where expected.row_count != reconciled.row_count

{% endtest %}
