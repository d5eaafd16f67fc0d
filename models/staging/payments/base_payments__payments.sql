with

source as (

    select * from {{ source('payments', 'payments') }}

),

currencies as (

    select * from {{ ref('currencies') }}

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
        {{ to_utc('created_at') }} as created_at,
        {{ to_utc('updated_at') }} as updated_at,
        _dlt_load_id as dlt_load_id
    from source

),

deduplicated as (

    {{ deduplicate('renamed', 'payment_id', 'updated_at desc, dlt_load_id desc') }}

),

final as (

    select
        deduplicated.payment_id,
        deduplicated.order_id,
        deduplicated.payment_method,
        deduplicated.payment_status,
        deduplicated.currency_code,
        deduplicated.amount,
        case
            when deduplicated.payment_id is null then 'missing_key'
            when deduplicated.order_id is null then 'missing_order'
            when currencies.currency_code is null then 'unknown_currency'
            when deduplicated.amount is null or deduplicated.amount < 0 then 'invalid_amount'
        end as quarantine_reason,
        deduplicated.is_refunded,
        deduplicated.created_at,
        deduplicated.updated_at,
        deduplicated.dlt_load_id
    from deduplicated
    left join currencies
        on deduplicated.currency_code = currencies.currency_code

)

select * from final
