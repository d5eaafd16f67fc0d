with

source as (

    select * from {{ source('shop', 'stock_levels') }}

),

renamed as (

    select
        cast(product_id as integer) as product_id,
        upper(trim(warehouse_code)) as warehouse_code,
        cast(quantity_on_hand as integer) as quantity_on_hand,
        {{ raw_row_status() }}
    from source

),

deduplicated as (

    {{ deduplicate('renamed', 'product_id, warehouse_code', 'updated_at desc, dlt_load_id desc') }}

),

final as (

    select
        product_id,
        warehouse_code,
        quantity_on_hand,
        case
            when product_id is null or warehouse_code is null then 'missing_key'
            when quantity_on_hand is null or quantity_on_hand < 0 then 'negative_stock'
        end as quarantine_reason,
        is_deleted,
        updated_at,
        deleted_at,
        dlt_load_id
    from deduplicated

)

select * from final
