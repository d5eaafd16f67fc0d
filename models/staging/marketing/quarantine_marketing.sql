{#
    Rows of the landing files that loaded (they fit their types) but broke a validity rule. Rows
    that did not even fit their types are in raw_marketing._quarantine, with file, line and reason.
#}
with

marketing_spend as (

    select
        'marketing_spend' as table_name,
        cast(spend_date as varchar(10)) || '/' || coalesce(channel, '') as record_key,
        source_file,
        quarantine_reason,
        dlt_load_id
    from {{ ref('base_marketing__marketing_spend') }}
    where quarantine_reason is not null

),

fx_rates as (

    select
        'fx_rates' as table_name,
        cast(rate_date as varchar(10)) || '/' || coalesce(currency_code, '') as record_key,
        source_file,
        quarantine_reason,
        dlt_load_id
    from {{ ref('base_marketing__fx_rates') }}
    where quarantine_reason is not null

),

final as (

    select * from marketing_spend
    union all
    select * from fx_rates

)

select * from final
