{#
    Joins the orders' validity: a line of a quarantined order waits in quarantine with it.
#}
with

source as (

    select * from {{ source('shop', 'order_items') }}

),

orders as (

    select * from {{ ref('base_shop__orders') }}

),

renamed as (

    select
        cast(order_item_id as integer) as order_item_id,
        cast(order_id as integer) as order_id,
        cast(product_id as integer) as product_id,
        cast(quantity as integer) as quantity,
        cast(unit_price as decimal(18, 2)) as unit_price,
        {{ raw_row_status() }}
    from source

),

deduplicated as (

    {{ deduplicate('renamed', 'order_item_id', 'updated_at desc, dlt_load_id desc') }}

),

final as (

    select
        deduplicated.order_item_id,
        deduplicated.order_id,
        deduplicated.product_id,
        deduplicated.quantity,
        deduplicated.unit_price,
        case
            when deduplicated.order_item_id is null then 'missing_key'
            when deduplicated.quantity is null or deduplicated.quantity <= 0
                then 'non_positive_quantity'
            when deduplicated.unit_price is null or deduplicated.unit_price < 0 then 'invalid_price'
            when orders.quarantine_reason is not null then 'order_quarantined'
        end as quarantine_reason,
        deduplicated.is_deleted,
        deduplicated.updated_at,
        deduplicated.deleted_at,
        deduplicated.dlt_load_id
    from deduplicated
    left join orders
        on deduplicated.order_id = orders.order_id

)

select * from final
