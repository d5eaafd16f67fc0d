with

orders_summed as (

    select * from {{ ref('int_orders_summed') }}

),

final as (

    select
        cast(order_id as integer) as order_id,
        cast(customer_id as integer) as customer_id,
        cast(status as varchar(12)) as status,
        cast(currency_code as varchar(3)) as currency_code,
        cast(item_count as integer) as item_count,
        cast(unit_count as integer) as unit_count,
        cast(order_amount as decimal(18, 2)) as order_amount,
        is_revenue,
        cast(ordered_at as date) as order_date,
        cast(ordered_at as timestamp) as ordered_at,
        cast(updated_at as timestamp) as updated_at
    from orders_summed

)

select * from final
