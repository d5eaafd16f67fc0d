-- Daily revenue adds up to the revenue orders it summarises: per day, the same number of
-- orders and units, and the same revenue as converting each order on its own (to the cent).
-- Returns the days where they differ.
with

orders as (

    select * from {{ ref('orders') }}
    where is_revenue

),

fx_rates as (

    select * from {{ ref('int_fx_rates_dated') }}

),

per_day as (

    select
        orders.order_date,
        count(*) as order_count,
        sum(orders.unit_count) as unit_count,
        round(sum(orders.order_amount * fx_rates.rate_to_base), 2) as revenue
    from orders
    left join fx_rates
        on
            orders.currency_code = fx_rates.currency_code
            and orders.order_date = fx_rates.rate_date
    group by orders.order_date

),

daily as (

    select * from {{ ref('daily_revenue') }}

),

final as (

    select
        per_day.order_date,
        per_day.order_count as orders_counted,
        daily.order_count as daily_order_count,
        per_day.revenue as orders_revenue,
        daily.revenue as daily_revenue
    from per_day
    full outer join daily
        on per_day.order_date = daily.order_date
    where
        per_day.order_count is distinct from daily.order_count
        or per_day.unit_count is distinct from daily.unit_count
        or abs(per_day.revenue - daily.revenue) > 0.01
        or daily.order_date is null
        or per_day.order_date is null

)

select * from final
