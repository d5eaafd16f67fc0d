with

source as (

    select * from {{ source('shop', 'customers') }}

),

renamed as (

    select
        cast(customer_id as integer) as customer_id,
        trim(first_name) as first_name,
        trim(last_name) as last_name,
        lower(trim(email)) as email,
        upper(trim(country_code)) as country_code,
        trim(city) as city,
        lower(trim(tier)) as tier,
        coalesce(_is_deleted, false) as is_deleted,
        cast(created_at as timestamp) as created_at,
        -- a deleted row's last change is its deletion: snapshots version it then
        cast(
            case when _is_deleted then _deleted_at else updated_at end as timestamp
        ) as updated_at,
        cast(_deleted_at as timestamp) as deleted_at,
        _dlt_load_id as dlt_load_id
    from source

),

deduplicated as (

    {{ deduplicate('renamed', 'customer_id', 'updated_at desc, dlt_load_id desc') }}

),

final as (

    select
        customer_id,
        first_name,
        last_name,
        email,
        country_code,
        city,
        tier,
        case
            when customer_id is null then 'missing_key'
            when email is null or email not like '%_@_%._%' then 'invalid_email'
        end as quarantine_reason,
        is_deleted,
        created_at,
        updated_at,
        deleted_at,
        dlt_load_id
    from deduplicated

)

select * from final
