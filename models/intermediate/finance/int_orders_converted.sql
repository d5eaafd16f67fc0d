{#
    Every live order (the rows of the orders mart, read from where the mart reads them) with its
    amount in the base currency (var `base_currency`), converted at the rate of its order date,
    at every build: a late FX file re-converts old orders. No rate: order_amount_base is null (the
    marts count such orders and their tests fail; they never silently drop them).
#}
with

orders as (

    select
        cast(order_id as integer) as order_id,
        cast(customer_id as integer) as customer_id,
        cast(channel as varchar(30)) as channel,
        cast(currency_code as varchar(3)) as currency_code,
        cast(unit_count as integer) as unit_count,
        cast(order_amount as decimal(18, 2)) as order_amount,
        is_revenue,
        cast(ordered_at as date) as order_date,
        cast(ordered_at as timestamp) as ordered_at
    from {{ ref('int_orders_summed') }}
    where not is_deleted and not is_quarantined

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
