with

source as (

    select * from {{ source('marketing', 'fx_rates') }}

),

final as (

    select
        upper(trim(currency_code)) as currency_code,
        _file as source_file,
        cast(rate_to_usd as {{ dbt.type_float() }}) as rate_to_usd,
        cast(rate_date as date) as rate_date,
        _dlt_load_id as dlt_load_id
    from source

)

select * from final
