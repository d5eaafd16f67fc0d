{#
    Return on ad spend per day and channel: revenue of the orders that came through the channel
    that day, over the day's spend, both in the base currency (var `base_currency`).
#}
with

marketing_spend as (

    select * from {{ ref('stg_marketing__marketing_spend') }}

),

channels as (

    select * from {{ ref('marketing_channels') }}

),

orders as (

    select * from {{ ref('int_orders_converted') }}
    where is_revenue and channel is not null

),

fx_rates as (

    select * from {{ ref('int_fx_rates_dated') }}

),

spend_converted as (

    select
        marketing_spend.spend_date,
        marketing_spend.channel,
        marketing_spend.clicks,
        marketing_spend.spend * fx_rates.rate_to_base as spend_base
    from marketing_spend
    left join fx_rates
        on
            marketing_spend.currency_code = fx_rates.currency_code
            and marketing_spend.spend_date = fx_rates.rate_date

),

channel_orders as (

    select
        order_date,
        channel,
        count(*) as order_count,
        sum(order_amount_base) as revenue_base
    from orders
    group by order_date, channel

),

final as (

    select
        cast(spend_converted.channel as varchar(30)) as channel,
        cast(channels.channel_group as varchar(60)) as channel_group,
        cast('{{ var("base_currency") }}' as varchar(3)) as currency_code,
        cast(spend_converted.clicks as integer) as clicks,
        cast(coalesce(channel_orders.order_count, 0) as integer) as order_count,
        cast(spend_converted.spend_base as decimal(18, 2)) as spend,
        cast(coalesce(channel_orders.revenue_base, 0) as decimal(18, 2)) as revenue,
        cast(
            coalesce(channel_orders.revenue_base, 0) / nullif(spend_converted.spend_base, 0)
            as decimal(18, 4)
        ) as return_on_ad_spend,
        channels.is_paid,
        spend_converted.spend_date
    from spend_converted
    inner join channels
        on spend_converted.channel = channels.channel
    left join channel_orders
        on
            spend_converted.spend_date = channel_orders.order_date
            and spend_converted.channel = channel_orders.channel

)

select * from final
