with

orders as (

    select * from {{ ref('stg_shop__orders') }}
    where not is_deleted

),

order_items as (

    select * from {{ ref('stg_shop__order_items') }}
    where not is_deleted

),

order_statuses as (

    select * from {{ ref('order_statuses') }}

),

item_totals as (

    select
        order_id,
        count(*) as item_count,
        sum(quantity) as unit_count,
        sum(quantity * unit_price) as order_amount
    from order_items
    group by order_id

),

final as (

    select
        orders.order_id,
        orders.customer_id,
        orders.status,
        orders.currency_code,
        coalesce(item_totals.item_count, 0) as item_count,
        coalesce(item_totals.unit_count, 0) as unit_count,
        coalesce(item_totals.order_amount, 0) as order_amount,
        coalesce(order_statuses.is_revenue, false) as is_revenue,
        orders.ordered_at,
        orders.updated_at
    from orders
    left join item_totals
        on orders.order_id = item_totals.order_id
    left join order_statuses
        on orders.status = order_statuses.status

)

select * from final
