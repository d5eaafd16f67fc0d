with

base as (

    select * from {{ ref('base_shop__stock_levels') }}

),

final as (

    select
        product_id,
        warehouse_code,
        quantity_on_hand,
        is_deleted,
        updated_at,
        deleted_at,
        dlt_load_id
    from base
    where quarantine_reason is null

)

select * from final
