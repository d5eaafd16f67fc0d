{#
    Monthly cohort retention: customers grouped by the month of their first revenue order, and
    for every later month the share of the cohort that ordered again in it.
#}
with

orders as (

    select * from {{ ref('orders') }}
    where is_revenue

),

customer_months as (

    select distinct
        customer_id,
        cast({{ dbt.date_trunc('month', 'order_date') }} as date) as order_month
    from orders

),

cohorts as (

    select
        customer_id,
        min(order_month) as cohort_month
    from customer_months
    group by customer_id

),

cohort_sizes as (

    select
        cohort_month,
        count(*) as cohort_size
    from cohorts
    group by cohort_month

),

activity as (

    select
        cohorts.cohort_month,
        {{ dbt.datediff(
            'cohorts.cohort_month', 'customer_months.order_month', 'month'
        ) }} as month_number,
        count(*) as active_customers
    from customer_months
    inner join cohorts
        on customer_months.customer_id = cohorts.customer_id
    group by cohorts.cohort_month, customer_months.order_month

),

final as (

    select
        cast(activity.month_number as integer) as month_number,
        cast(cohort_sizes.cohort_size as integer) as cohort_size,
        cast(activity.active_customers as integer) as active_customers,
        cast(
            1.0 * activity.active_customers / cohort_sizes.cohort_size as decimal(6, 4)
        ) as retention_rate,
        activity.cohort_month
    from activity
    inner join cohort_sizes
        on activity.cohort_month = cohort_sizes.cohort_month

)

select * from final
