{#
    Fails when the newest `field` of the model is older than `interval` `datepart`s before now,
    or when the model has no rows at all: the data stopped arriving.
#}
{% test recency(model, field, datepart, interval) %}

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
