{{
    config(
        materialized='incremental',
        incremental_strategy='merge',
        unique_key='order_id',
        on_schema_change='fail',
        post_hook="delete from {{ this }} where is_deleted",
    )
}}
{#
    Incremental: each build merges the orders whose rows (the order or any of its lines) were
    loaded since the last build, late-arriving updates included, then removes the orders deleted
    at the source. A full refresh gives the same table (tested).
#}
with

orders as (

    select * from {{ ref('int_orders_summed') }}
    {% if is_incremental() %}
        where last_load > (select coalesce(max(this.last_load), 0) from {{ this }} as this)
    {% endif %}

),

customer_as_of as (

    select * from {{ ref('int_orders_customer_as_of') }}

),

final as (

    select
        cast(orders.order_id as integer) as order_id,
        cast(orders.customer_id as integer) as customer_id,
        cast(orders.status as varchar(12)) as status,
        cast(orders.currency_code as varchar(3)) as currency_code,
        cast(orders.channel as varchar(30)) as channel,
        cast(customer_as_of.customer_tier as varchar(10)) as customer_tier,
        cast(customer_as_of.customer_country_code as varchar(2)) as customer_country_code,
        cast(orders.item_count as integer) as item_count,
        cast(orders.unit_count as integer) as unit_count,
        cast(orders.order_amount as decimal(18, 2)) as order_amount,
        cast(orders.last_load as {{ double() }}) as last_load,
        orders.is_revenue,
        orders.is_deleted or orders.is_quarantined as is_deleted,
        cast(orders.ordered_at as date) as order_date,
        cast(orders.ordered_at as timestamp) as ordered_at,
        cast(orders.updated_at as timestamp) as updated_at
    from orders
    left join customer_as_of
        on orders.order_id = customer_as_of.order_id

)

select * from final
