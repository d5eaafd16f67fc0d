{#
    Every order (deleted ones and those held in quarantine flagged, so the incremental orders mart
    can remove them) with its live valid lines summed, and the latest load that touched the order
    or any of its lines (quarantined lines too): the orders mart picks up exactly the orders whose
    rows arrived since its last build, including an order whose line or itself just moved to
    quarantine.
#}
with

orders as (

    select * from {{ ref('base_shop__orders') }}
    where order_id is not null

),

line_loads as (

    select
        order_id,
        max(cast(dlt_load_id as {{ double() }})) as last_line_load
    from {{ ref('base_shop__order_items') }}
    group by order_id

),

order_items as (

    select * from {{ ref('stg_shop__order_items') }}

),

order_statuses as (

    select * from {{ ref('order_statuses') }}

),

item_totals as (

    select
        order_id,
        sum(case when not is_deleted then 1 else 0 end) as item_count,
        sum(case when not is_deleted then quantity else 0 end) as unit_count,
        sum(case when not is_deleted then quantity * unit_price else 0 end) as order_amount
    from order_items
    group by order_id

),

final as (

    select
        orders.order_id,
        orders.customer_id,
        orders.status,
        orders.currency_code,
        orders.channel,
        coalesce(item_totals.item_count, 0) as item_count,
        coalesce(item_totals.unit_count, 0) as unit_count,
        cast(coalesce(item_totals.order_amount, 0) as decimal(18, 2)) as order_amount,
        coalesce(order_statuses.is_revenue, false) as is_revenue,
        orders.is_deleted,
        orders.quarantine_reason is not null as is_quarantined,
        orders.ordered_at,
        orders.updated_at,
        greatest(
            cast(orders.dlt_load_id as {{ double() }}),
            coalesce(line_loads.last_line_load, 0)
        ) as last_load
    from orders
    left join item_totals
        on orders.order_id = item_totals.order_id
    left join line_loads
        on orders.order_id = line_loads.order_id
    left join order_statuses
        on orders.status = order_statuses.status

)

select * from final
