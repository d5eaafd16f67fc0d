with

source as (

    select * from {{ source('shop', 'products') }}

),

currencies as (

    select * from {{ ref('currencies') }}

),

renamed as (

    select
        cast(product_id as integer) as product_id,
        upper(trim(sku)) as sku,
        trim(product_name) as product_name,
        lower(trim(category)) as category,
        upper(trim(currency_code)) as currency_code,
        cast(unit_price as decimal(18, 2)) as unit_price,
        {{ to_utc('created_at') }} as created_at,
        {{ raw_row_status() }}
    from source

),

deduplicated as (

    {{ deduplicate('renamed', 'product_id', 'updated_at desc, dlt_load_id desc') }}

),

final as (

    select
        deduplicated.product_id,
        deduplicated.sku,
        deduplicated.product_name,
        deduplicated.category,
        deduplicated.currency_code,
        deduplicated.unit_price,
        case
            when deduplicated.product_id is null then 'missing_key'
            when deduplicated.unit_price is null or deduplicated.unit_price < 0 then 'invalid_price'
            when currencies.currency_code is null then 'unknown_currency'
        end as quarantine_reason,
        deduplicated.is_deleted,
        deduplicated.created_at,
        deduplicated.updated_at,
        deduplicated.deleted_at,
        deduplicated.dlt_load_id
    from deduplicated
    left join currencies
        on deduplicated.currency_code = currencies.currency_code

)

select * from final
