with

source as (

    select * from {{ source('web', 'web_events') }}

),

final as (

    select
        event_id,
        cast(customer_id as integer) as customer_id,
        cast(product_id as integer) as product_id,
        lower(trim(event_type)) as event_type,
        cast(_stream_seq as bigint) as stream_seq,
        cast(occurred_at as timestamp) as occurred_at,
        _dlt_load_id as dlt_load_id
    from source

)

select * from final
