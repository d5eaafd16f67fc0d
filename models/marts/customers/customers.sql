with

customers as (

    select * from {{ ref('stg_shop__customers') }}
    where not is_deleted

),

orders as (

    select * from {{ ref('int_orders_converted') }}
    where is_revenue

),

customer_orders as (

    select
        customer_id,
        count(*) as order_count,
        sum(order_amount_base) as lifetime_value,
        min(ordered_at) as first_ordered_at,
        max(ordered_at) as last_ordered_at
    from orders
    group by customer_id

),

final as (

    select
        cast(customers.customer_id as integer) as customer_id,
        cast(customers.first_name as varchar(50)) as first_name,
        cast(customers.last_name as varchar(64)) as last_name,
        cast(customers.email as varchar(120)) as email,
        cast(customers.country_code as varchar(2)) as country_code,
        cast(customers.city as varchar(60)) as city,
        cast(customers.tier as varchar(10)) as tier,
        cast(coalesce(customer_orders.order_count, 0) as integer) as order_count,
        cast(coalesce(customer_orders.lifetime_value, 0) as decimal(18, 2)) as lifetime_value,
        cast(customers.created_at as timestamp) as created_at,
        cast(customer_orders.first_ordered_at as timestamp) as first_ordered_at,
        cast(customer_orders.last_ordered_at as timestamp) as last_ordered_at,
        cast(customers.updated_at as timestamp) as updated_at
    from customers
    left join customer_orders
        on customers.customer_id = customer_orders.customer_id

)

select * from final
