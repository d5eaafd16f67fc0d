{#
    Events that parsed but broke a validity rule. Messages that did not parse at all (poison
    messages) are in raw_web._quarantine, with their stream sequence and the parse error.
#}
with

web_events as (

    select
        'web_events' as table_name,
        cast(event_id as varchar(64)) as record_key,
        quarantine_reason,
        dlt_load_id,
        occurred_at
    from {{ ref('base_web__web_events') }}
    where quarantine_reason is not null

),

final as (

    select * from web_events

)

select * from final
