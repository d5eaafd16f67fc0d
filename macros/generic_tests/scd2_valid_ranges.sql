{#
    SCD2 history check: per `key`, versions ordered by `valid_from` must neither overlap nor
    leave gaps, no version may end before it starts, and only the last version may be open
    (`valid_to` null). Fails with one row per offending version and the reason.
#}
{% test scd2_valid_ranges(model, key, valid_from='dbt_valid_from', valid_to='dbt_valid_to') %}

with

versions as (

    select
        {{ key }} as key_value,
        {{ valid_from }} as valid_from,
        {{ valid_to }} as valid_to,
        lead({{ valid_from }}) over (partition by {{ key }} order by {{ valid_from }}) as next_valid_from
    from {{ model }}

),

checked as (

    select
        key_value,
        valid_from,
        valid_to,
        next_valid_from,
        case
            when valid_to is not null and valid_to <= valid_from then 'ends before it starts'
            when valid_to is null and next_valid_from is not null then 'open version is not the last'
            when next_valid_from < valid_to then 'overlaps the next version'
            when next_valid_from > valid_to then 'gap before the next version'
        end as problem
    from versions

)

select *
from checked
where problem is not null

{% endtest %}
