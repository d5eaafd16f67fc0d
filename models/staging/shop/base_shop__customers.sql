{#
    The one join in staging: the countries seed, reference data to standardise phone numbers
    (calling code, trunk prefix) and to check the country code.
#}
with

source as (

    select * from {{ source('shop', 'customers') }}

),

countries as (

    select * from {{ ref('countries') }}

),

renamed as (

    select
        cast(customer_id as integer) as customer_id,
        trim(first_name) as first_name,
        trim(last_name) as last_name,
        lower(trim(email)) as email,
        trim(phone) as phone,
        upper(trim(country_code)) as country_code,
        trim(city) as city,
        lower(trim(tier)) as tier,
        {{ to_utc('created_at') }} as created_at,
        {{ raw_row_status() }}
    from source

),

deduplicated as (

    {{ deduplicate('renamed', 'customer_id', 'updated_at desc, dlt_load_id desc') }}

),

standardized as (

    select
        deduplicated.*,
        countries.country_code is not null as is_known_country,
        {{ standardize_phone(
            'deduplicated.phone', 'countries.calling_code', 'countries.trunk_prefix'
        ) }} as phone_e164
    from deduplicated
    left join countries
        on deduplicated.country_code = countries.country_code

),

final as (

    select
        customer_id,
        first_name,
        {{ pii('last_name') }} as last_name,
        {{ pii('email') }} as email,
        {{ pii('phone', 'phone_e164') }} as phone,
        country_code,
        city,
        tier,
        case
            when customer_id is null then 'missing_key'
            when email is null or email not like '%_@_%._%' then 'invalid_email'
            when country_code is not null and not is_known_country then 'unknown_country'
        end as quarantine_reason,
        is_deleted,
        created_at,
        updated_at,
        deleted_at,
        dlt_load_id
    from standardized

)

select * from final
