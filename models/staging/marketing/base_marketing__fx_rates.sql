with

source as (

    select * from {{ source('marketing', 'fx_rates') }}

),

currencies as (

    select * from {{ ref('currencies') }}

),

renamed as (

    select
        upper(trim(currency_code)) as currency_code,
        {{ file_column() }} as source_file,
        cast(rate_to_usd as {{ double() }}) as rate_to_usd,
        cast(rate_date as date) as rate_date,
        _dlt_load_id as dlt_load_id
    from source

),

final as (

    select
        renamed.currency_code,
        renamed.source_file,
        renamed.rate_to_usd,
        case
            when renamed.rate_date is null or renamed.currency_code is null then 'missing_key'
            when currencies.currency_code is null then 'unknown_currency'
            when renamed.rate_to_usd is null or renamed.rate_to_usd <= 0 then 'invalid_rate'
        end as quarantine_reason,
        renamed.rate_date,
        renamed.dlt_load_id
    from renamed
    left join currencies
        on renamed.currency_code = currencies.currency_code

)

select * from final
