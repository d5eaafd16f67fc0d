with

orders as (

    select * from {{ ref('orders') }}
    where is_revenue

),

final as (

    select
        order_date,
        cast(currency_code as varchar(3)) as currency_code,
        cast(count(*) as integer) as order_count,
        cast(count(distinct customer_id) as integer) as customer_count,
        cast(sum(unit_count) as integer) as unit_count,
        cast(sum(order_amount) as decimal(18, 2)) as revenue
    from orders
    group by order_date, currency_code

)

select * from final
