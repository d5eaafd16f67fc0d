with

source as (

    select * from {{ source('shop', 'orders') }}

),

renamed as (

    select
        cast(order_id as integer) as order_id,
        cast(customer_id as integer) as customer_id,
        lower(trim(status)) as status,
        upper(trim(currency_code)) as currency_code,
        cast(ordered_at as timestamp) as ordered_at,
        {{ raw_row_status() }}
    from source

),

deduplicated as (

    {{ deduplicate('renamed', 'order_id', 'updated_at desc, dlt_load_id desc') }}

),

final as (

    select
        order_id,
        customer_id,
        status,
        currency_code,
        case
            when order_id is null then 'missing_key'
            when customer_id is null then 'missing_customer'
        end as quarantine_reason,
        is_deleted,
        ordered_at,
        updated_at,
        deleted_at,
        dlt_load_id
    from deduplicated

)

select * from final
