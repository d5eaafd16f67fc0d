{#
    One row per live product: its current price, how often the price changed (from the price
    history snapshot), what it sold over revenue orders and its stock across warehouses.
#}
with

products as (

    select * from {{ ref('stg_shop__products') }}
    where not is_deleted

),

price_history as (

    select * from {{ ref('products_snapshot') }}

),

order_items as (

    select * from {{ ref('stg_shop__order_items') }}
    where not is_deleted

),

orders as (

    select * from {{ ref('orders') }}
    where is_revenue

),

stock_levels as (

    select * from {{ ref('stg_shop__stock_levels') }}
    where not is_deleted

),

price_versions as (

    select
        product_id,
        count(*) as price_version_count,
        min(unit_price) as lowest_price,
        max(unit_price) as highest_price
    from price_history
    where not is_deleted
    group by product_id

),

sales as (

    select
        order_items.product_id,
        count(distinct order_items.order_id) as order_count,
        sum(order_items.quantity) as unit_count
    from order_items
    inner join orders
        on order_items.order_id = orders.order_id
    group by order_items.product_id

),

stock as (

    select
        product_id,
        sum(quantity_on_hand) as units_in_stock,
        count(*) as warehouse_count
    from stock_levels
    group by product_id

),

final as (

    select
        cast(products.product_id as integer) as product_id,
        cast(products.sku as varchar(20)) as sku,
        cast(products.product_name as varchar(100)) as product_name,
        cast(products.category as varchar(40)) as category,
        cast(products.currency_code as varchar(3)) as currency_code,
        cast(products.unit_price as decimal(18, 2)) as unit_price,
        cast(price_versions.lowest_price as decimal(18, 2)) as lowest_price,
        cast(price_versions.highest_price as decimal(18, 2)) as highest_price,
        cast(coalesce(price_versions.price_version_count, 0) as integer) as price_version_count,
        cast(coalesce(sales.order_count, 0) as integer) as order_count,
        cast(coalesce(sales.unit_count, 0) as integer) as unit_count,
        cast(coalesce(stock.units_in_stock, 0) as integer) as units_in_stock,
        cast(coalesce(stock.warehouse_count, 0) as integer) as warehouse_count,
        cast(products.created_at as timestamp) as created_at,
        cast(products.updated_at as timestamp) as updated_at
    from products
    left join price_versions
        on products.product_id = price_versions.product_id
    left join sales
        on products.product_id = sales.product_id
    left join stock
        on products.product_id = stock.product_id

)

select * from final
