{#
    Every order of the orders mart with its amount in the base currency (var `base_currency`),
    converted at the rate of its order date. No rate: order_amount_base is null (the marts
    count such orders and their tests fail; they never silently drop them).
#}
with

orders as (

    select * from {{ ref('orders') }}

),

fx_rates as (

    select * from {{ ref('int_fx_rates_dated') }}

),

final as (

    select
        orders.order_id,
        orders.customer_id,
        orders.channel,
        orders.currency_code,
        orders.unit_count,
        orders.order_amount,
        fx_rates.rate_to_base,
        orders.order_amount * fx_rates.rate_to_base as order_amount_base,
        orders.is_revenue,
        orders.order_date,
        orders.ordered_at
    from orders
    left join fx_rates
        on
            orders.currency_code = fx_rates.currency_code
            and orders.order_date = fx_rates.rate_date

)

select * from final
