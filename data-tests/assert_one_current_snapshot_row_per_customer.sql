-- The customer snapshot has exactly one current version (dbt_valid_to is null) per customer.
select
    customer_id,
    count(*) as current_versions
from {{ ref('customers_snapshot') }}
where dbt_valid_to is null
group by customer_id
having count(*) != 1
