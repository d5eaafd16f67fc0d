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
        coalesce(_is_deleted, false) as is_deleted,
        cast(ordered_at as timestamp) as ordered_at,
        cast(
            case when _is_deleted then _deleted_at else updated_at end as timestamp
        ) as updated_at,
        cast(_deleted_at as timestamp) as deleted_at,
        _dlt_load_id as dlt_load_id
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
