{{
    config(
        materialized='incremental',
        incremental_strategy='microbatch',
        event_time='activity_date',
        begin=var('web_events_begin'),
        batch_size='day',
        lookback=1,
        on_schema_change='fail',
        unique_key=(['activity_date', 'event_type'] if target.type == 'postgres' else none),
        partition_by=(['activity_date'] if target.type == 'spark' else none),
    )
}}
{#
    Web activity per day and event type, built by dbt's microbatch strategy: one batch per day,
    each reading only that day's events (stg_web__web_events declares event_time). Rebuild a
    date range, e.g. after late events, with
      dbt build --select daily_web_activity --event-time-start 2026-01-02 --event-time-end 2026-01-04
    dbt-duckdb replaces each batch's days (delete + insert) and refuses a unique_key; dbt-postgres
    merges each batch on the unique_key, which it requires; dbt-spark overwrites each batch's
    partitions, which it requires.
#}
with

web_events as (

    select * from {{ ref('stg_web__web_events') }}

),

final as (

    select
        cast(event_type as varchar(20)) as event_type,
        cast(count(*) as integer) as event_count,
        cast(count(distinct customer_id) as integer) as customer_count,
        cast(count(distinct product_id) as integer) as product_count,
        cast(occurred_at as date) as activity_date
    from web_events
    group by cast(occurred_at as date), event_type

)

select * from final
