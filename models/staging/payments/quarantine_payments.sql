{#
    Payments that broke a validity rule: they stay out of staging until fixed at the source (or
    the rule changes), then flow on at the next run.
#}
with

payments as (

    select
        'payments' as table_name,
        cast(payment_id as varchar(64)) as record_key,
        quarantine_reason,
        dlt_load_id,
        updated_at
    from {{ ref('base_payments__payments') }}
    where quarantine_reason is not null

),

final as (

    select * from payments

)

select * from final
