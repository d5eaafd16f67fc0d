with

source as (

    select * from {{ source('marketing', 'marketing_spend') }}

),

renamed as (

    select
        lower(trim(channel)) as channel,
        upper(trim(currency_code)) as currency_code,
        _file as source_file,
        cast(spend as decimal(12, 2)) as spend,
        cast(clicks as integer) as clicks,
        cast(spend_date as date) as spend_date,
        _dlt_load_id as dlt_load_id
    from source

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
    from renamed

)

select * from final
