with

base as (

    select * from {{ ref('base_payments__payments') }}

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
    from base
    where quarantine_reason is null

)

select * from final
