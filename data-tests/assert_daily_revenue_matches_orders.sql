-- Daily revenue must add up to the revenue of the orders it summarises, per currency.
-- Returns the currencies where the two totals differ.
with

orders as (

    select
        currency_code,
        sum(order_amount) as revenue
    from {{ ref('orders') }}
    where is_revenue
    group by currency_code

),

daily as (

    select
        currency_code,
        sum(revenue) as revenue
    from {{ ref('daily_revenue') }}
    group by currency_code

),

final as (

    select
        orders.currency_code,
        orders.revenue as orders_revenue,
        daily.revenue as daily_revenue
    from orders
    full outer join daily
        on orders.currency_code = daily.currency_code
    where orders.revenue is distinct from daily.revenue

)

select * from final
