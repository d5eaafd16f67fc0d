with

source as (

    select * from {{ source('marketing', 'marketing_spend') }}

),

channels as (

    select * from {{ ref('marketing_channels') }}

),

currencies as (

    select * from {{ ref('currencies') }}

),

renamed as (

    select
        lower(trim(channel)) as channel,
        upper(trim(currency_code)) as currency_code,
        {{ file_column() }} as source_file,
        cast(spend as decimal(12, 2)) as spend,
        cast(clicks as integer) as clicks,
        cast(spend_date as date) as spend_date,
        _dlt_load_id as dlt_load_id
    from source

),

final as (

    select
        renamed.channel,
        renamed.currency_code,
        renamed.source_file,
        renamed.spend,
        renamed.clicks,
        case
            when renamed.spend_date is null or renamed.channel is null then 'missing_key'
            when channels.channel is null then 'unknown_channel'
            when currencies.currency_code is null then 'unknown_currency'
            when renamed.spend is null or renamed.spend < 0 then 'invalid_spend'
            when renamed.clicks < 0 then 'negative_clicks'
        end as quarantine_reason,
        renamed.spend_date,
        renamed.dlt_load_id
    from renamed
    left join channels
        on renamed.channel = channels.channel
    left join currencies
        on renamed.currency_code = currencies.currency_code

)

select * from final
