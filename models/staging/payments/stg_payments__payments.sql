with

source as (

    select * from {{ source('payments', 'payments') }}

),

renamed as (

    select
        cast(payment_id as integer) as payment_id,
        cast(order_id as integer) as order_id,
        lower(trim(method)) as payment_method,
        lower(trim(status)) as payment_status,
        upper(trim(currency)) as currency_code,
        cast(amount as decimal(12, 2)) as amount,
        lower(trim(status)) = 'refunded' as is_refunded,
        cast(created_at as timestamp) as created_at,
        cast(updated_at as timestamp) as updated_at,
        _dlt_load_id as dlt_load_id
    from source

),

deduplicated as (

    {{ deduplicate('renamed', 'payment_id', 'updated_at desc, dlt_load_id desc') }}

),

final as (

    select
        payment_id,
        order_id,
        payment_method,
        payment_status,
        currency_code,
        amount,
        is_refunded,
        created_at,
        updated_at,
        dlt_load_id
    from deduplicated

)

select * from final
