with

source as (

    select * from {{ source('shop', 'products') }}

),

renamed as (

    select
        cast(product_id as integer) as product_id,
        upper(trim(sku)) as sku,
        trim(product_name) as product_name,
        lower(trim(category)) as category,
        upper(trim(currency_code)) as currency_code,
        cast(unit_price as decimal(18, 2)) as unit_price,
        cast(created_at as timestamp) as created_at,
        {{ raw_row_status() }}
    from source

),

deduplicated as (

    {{ deduplicate('renamed', 'product_id', 'updated_at desc, dlt_load_id desc') }}

),

final as (

    select
        product_id,
        sku,
        product_name,
        category,
        currency_code,
        unit_price,
        case
            when product_id is null then 'missing_key'
            when unit_price is null or unit_price < 0 then 'invalid_price'
        end as quarantine_reason,
        is_deleted,
        created_at,
        updated_at,
        deleted_at,
        dlt_load_id
    from deduplicated

)

select * from final
