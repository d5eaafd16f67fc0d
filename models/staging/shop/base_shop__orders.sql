{#
    Joins reference data (currencies) and the customers' validity: an order of a quarantined
    customer waits in quarantine with it, so staging never holds an order without its customer.
#}
with

source as (

    select * from {{ source('shop', 'orders') }}

),

currencies as (

    select * from {{ ref('currencies') }}

),

customers as (

    select * from {{ ref('base_shop__customers') }}

),

renamed as (

    select
        cast(order_id as integer) as order_id,
        cast(customer_id as integer) as customer_id,
        lower(trim(status)) as status,
        upper(trim(currency_code)) as currency_code,
        nullif(lower(trim(channel)), '') as channel,
        {{ to_utc('ordered_at') }} as ordered_at,
        {{ raw_row_status() }}
    from source

),

deduplicated as (

    {{ deduplicate('renamed', 'order_id', 'updated_at desc, dlt_load_id desc') }}

),

checked as (

    select
        deduplicated.*,
        currencies.currency_code is not null as is_known_currency,
        customers.quarantine_reason as customer_quarantine_reason,
        customers.created_at as customer_created_at
    from deduplicated
    left join currencies
        on deduplicated.currency_code = currencies.currency_code
    left join customers
        on deduplicated.customer_id = customers.customer_id

),

final as (

    select
        order_id,
        customer_id,
        status,
        currency_code,
        channel,
        case
            when order_id is null then 'missing_key'
            when customer_id is null then 'missing_customer'
            when customer_quarantine_reason is not null then 'customer_quarantined'
            when not is_known_currency then 'unknown_currency'
            when ordered_at < customer_created_at then 'ordered_before_customer_existed'
        end as quarantine_reason,
        is_deleted,
        ordered_at,
        updated_at,
        deleted_at,
        dlt_load_id
    from checked

)

select * from final
