with

base as (

    select * from {{ ref('base_shop__customers') }}

),

final as (

    select
        customer_id,
        first_name,
        last_name,
        email,
        phone,
        country_code,
        city,
        tier,
        is_deleted,
        created_at,
        updated_at,
        deleted_at,
        dlt_load_id
    from base
    where quarantine_reason is null

)

select * from final
