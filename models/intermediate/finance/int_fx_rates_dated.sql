{#
    The rate to the base currency (var `base_currency`, USD by default) of every currency on every
    day an order or a marketing spend needs one: the latest rate published on or before that day
    (weekends and late files keep the last rate). USD is worth 1 USD on every day. A day before
    the first published rate gets no rate (null), and the marts' tests name it.
#}
with

orders as (

    select * from {{ ref('int_orders_summed') }}
    where not is_deleted and not is_quarantined

),

marketing_spend as (

    select * from {{ ref('stg_marketing__marketing_spend') }}

),

published as (

    select
        currency_code,
        rate_date,
        rate_to_usd
    from {{ ref('stg_marketing__fx_rates') }}

),

needed_days as (

    select distinct cast(ordered_at as date) as rate_date from orders
    union
    select distinct spend_date as rate_date from marketing_spend

),

needed_currencies as (

    select distinct currency_code from orders
    union
    select distinct currency_code from marketing_spend
    union
    select '{{ var("base_currency") }}' as currency_code

),

candidates as (

    select
        needed_currencies.currency_code,
        needed_days.rate_date,
        published.rate_date as published_on,
        case
            when needed_currencies.currency_code = 'USD' then 1.0
            else published.rate_to_usd
        end as rate_to_usd,
        row_number() over (
            partition by needed_currencies.currency_code, needed_days.rate_date
            order by published.rate_date desc nulls last
        ) as recency_rank
    from needed_currencies
    cross join needed_days
    left join published
        on
            needed_currencies.currency_code = published.currency_code
            and needed_days.rate_date >= published.rate_date

),

as_of as (

    select
        currency_code,
        rate_date,
        published_on,
        rate_to_usd
    from candidates
    where recency_rank = 1

),

base as (

    select
        rate_date,
        rate_to_usd as base_rate_to_usd
    from as_of
    where currency_code = '{{ var("base_currency") }}'

),

final as (

    select
        as_of.currency_code,
        as_of.rate_date,
        as_of.published_on,
        cast(as_of.rate_to_usd / base.base_rate_to_usd as decimal(18, 10)) as rate_to_base
    from as_of
    inner join base
        on as_of.rate_date = base.rate_date

)

select * from final
