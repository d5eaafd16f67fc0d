with

source as (

    select * from {{ source('web', 'web_events') }}

),

renamed as (

    select
        event_id,
        cast(customer_id as integer) as customer_id,
        cast(product_id as integer) as product_id,
        lower(trim(event_type)) as event_type,
        cast(_stream_seq as bigint) as stream_seq,
        {{ to_utc('occurred_at') }} as occurred_at,
        _dlt_load_id as dlt_load_id
    from source

),

final as (

    select
        event_id,
        customer_id,
        product_id,
        event_type,
        stream_seq,
        case
            when event_id is null then 'missing_key'
            when event_type not in ('page_view', 'add_to_cart') then 'unknown_event_type'
            when occurred_at is null then 'missing_time'
        end as quarantine_reason,
        occurred_at,
        dlt_load_id
    from renamed

)

select * from final
