with

base as (

    select * from {{ ref('base_shop__orders') }}

),

final as (

    select
        order_id,
        customer_id,
        status,
        currency_code,
        channel,
        is_deleted,
        ordered_at,
        updated_at,
        deleted_at,
        dlt_load_id
    from base
    where quarantine_reason is null

)

select * from final
