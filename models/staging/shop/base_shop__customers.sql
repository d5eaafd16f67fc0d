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
        cast(created_at as timestamp) as created_at,
        {{ raw_row_status() }}
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
