with

source as (

    select * from {{ source('shop', 'order_items') }}

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
        order_item_id,
        order_id,
        product_id,
        quantity,
        unit_price,
        case
            when order_item_id is null then 'missing_key'
            when quantity is null or quantity <= 0 then 'non_positive_quantity'
            when unit_price is null or unit_price < 0 then 'invalid_price'
        end as quarantine_reason,
        is_deleted,
        updated_at,
        deleted_at,
        dlt_load_id
    from deduplicated

)

select * from final
