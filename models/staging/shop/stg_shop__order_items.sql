with

base as (

    select * from {{ ref('base_shop__order_items') }}

),

final as (

    select
        order_item_id,
        order_id,
        product_id,
        quantity,
        unit_price,
        is_deleted,
        updated_at,
        deleted_at,
        dlt_load_id
    from base
    where quarantine_reason is null

)

select * from final
