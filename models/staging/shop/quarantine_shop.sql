{#
    Rows of the shop that broke a validity rule: they stay out of staging until fixed at the
    source (or the rule changes), then flow on at the next run.
#}
with

customers as (

    select
        'customers' as table_name,
        cast(customer_id as varchar(64)) as record_key,
        quarantine_reason,
        dlt_load_id,
        updated_at
    from {{ ref('base_shop__customers') }}
    where quarantine_reason is not null

),

products as (

    select
        'products' as table_name,
        cast(product_id as varchar(64)) as record_key,
        quarantine_reason,
        dlt_load_id,
        updated_at
    from {{ ref('base_shop__products') }}
    where quarantine_reason is not null

),

orders as (

    select
        'orders' as table_name,
        cast(order_id as varchar(64)) as record_key,
        quarantine_reason,
        dlt_load_id,
        updated_at
    from {{ ref('base_shop__orders') }}
    where quarantine_reason is not null

),

order_items as (

    select
        'order_items' as table_name,
        cast(order_item_id as varchar(64)) as record_key,
        quarantine_reason,
        dlt_load_id,
        updated_at
    from {{ ref('base_shop__order_items') }}
    where quarantine_reason is not null

),

stock_levels as (

    select
        'stock_levels' as table_name,
        -- a composite key: its columns' values joined by '|'
        cast(cast(product_id as varchar(20)) || '|' || warehouse_code as varchar(64)) as record_key,
        quarantine_reason,
        dlt_load_id,
        updated_at
    from {{ ref('base_shop__stock_levels') }}
    where quarantine_reason is not null

),

final as (

    select * from customers
    union all
    select * from products
    union all
    select * from orders
    union all
    select * from order_items
    union all
    select * from stock_levels

)

select * from final
