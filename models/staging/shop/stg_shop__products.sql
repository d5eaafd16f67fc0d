with

base as (

    select * from {{ ref('base_shop__products') }}

),

final as (

    select
        product_id,
        sku,
        product_name,
        category,
        currency_code,
        unit_price,
        is_deleted,
        created_at,
        updated_at,
        deleted_at,
        dlt_load_id
    from base
    where quarantine_reason is null

)

select * from final
