with

base as (

    select * from {{ ref('base_marketing__marketing_spend') }}

),

final as (

    select
        channel,
        currency_code,
        source_file,
        spend,
        clicks,
        spend_date,
        dlt_load_id
    from base
    where quarantine_reason is null

)

select * from final
