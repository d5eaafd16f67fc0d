{#
    Fails when the newest `field` of the model is older than `interval` `datepart`s before now,
    or when the model has no rows at all: the data stopped arriving. Tagged `every_night`: it
    reads the clock, so a night runs it even when its model got nothing new (then most of all).
#}
{% test recency(model, field, datepart, interval) %}

{{ config(tags=['every_night']) }}

with

latest as (

    select max({{ field }}) as latest_at
    from {{ model }}

)

select latest_at
from latest
where
    latest_at is null
    or cast(latest_at as {{ dbt.type_timestamp() }})
    < cast({{ dbt.dateadd(datepart, -1 * interval, dbt.current_timestamp()) }} as {{ dbt.type_timestamp() }})

{% endtest %}
