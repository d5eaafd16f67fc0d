{#
    Revenue per order date in one base currency (var `base_currency`), each order converted at
    its day's rate. An order lacking a rate is counted in unconverted_order_count (tested to be
    zero), never silently left out of the sum.
#}
with

orders as (

    select * from {{ ref('int_orders_converted') }}
    where is_revenue

),

final as (

    select
        order_date,
        cast('{{ var("base_currency") }}' as varchar(3)) as currency_code,
        cast(count(*) as integer) as order_count,
        cast(count(distinct customer_id) as integer) as customer_count,
        cast(sum(unit_count) as integer) as unit_count,
        cast(
            sum(case when order_amount_base is null then 1 else 0 end) as integer
        ) as unconverted_order_count,
        cast(coalesce(sum(order_amount_base), 0) as decimal(18, 2)) as revenue
    from orders
    group by order_date

)

select * from final
