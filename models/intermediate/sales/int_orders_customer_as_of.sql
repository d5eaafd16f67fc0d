{#
    Each order with the customer's attributes as they were when it was placed: the customer
    snapshot's version whose validity covers `ordered_at`. An order older than the customer's
    first recorded version (history starts with the first run) takes that first version.
#}
with

orders as (

    select * from {{ ref('int_orders_summed') }}

),

customer_versions as (

    select
        customer_id,
        tier,
        country_code,
        dbt_valid_from as valid_from,
        dbt_valid_to as valid_to,
        row_number() over (partition by customer_id order by dbt_valid_from) as version_number
    from {{ ref('customers_snapshot') }}

),

final as (

    select
        orders.order_id,
        customer_versions.tier as customer_tier,
        customer_versions.country_code as customer_country_code
    from orders
    left join customer_versions
        on
            orders.customer_id = customer_versions.customer_id
            and (
                (
                    orders.ordered_at >= customer_versions.valid_from
                    and (
                        orders.ordered_at < customer_versions.valid_to
                        or customer_versions.valid_to is null
                    )
                )
                or (
                    customer_versions.version_number = 1
                    and orders.ordered_at < customer_versions.valid_from
                )
            )

)

select * from final
