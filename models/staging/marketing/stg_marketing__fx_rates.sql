with

base as (

    select * from {{ ref('base_marketing__fx_rates') }}

),

final as (

    select
        currency_code,
        source_file,
        rate_to_usd,
        rate_date,
        dlt_load_id
    from base
    where quarantine_reason is null

)

select * from final
