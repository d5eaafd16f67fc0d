-- daily_revenue has one row per order date and currency.
select
    order_date,
    currency_code,
    count(*) as row_count
from {{ ref('daily_revenue') }}
group by order_date, currency_code
having count(*) > 1
