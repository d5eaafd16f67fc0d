with

base as (

    select * from {{ ref('base_web__web_events') }}

),

final as (

    select
        event_id,
        customer_id,
        product_id,
        event_type,
        stream_seq,
        occurred_at,
        dlt_load_id
    from base
    where quarantine_reason is null

)

select * from final
