{#
    The bookkeeping columns every raw table of a dlt database source carries, renamed for
    staging: is_deleted, updated_at, deleted_at, dlt_load_id. A deleted row's updated_at is the
    time ingestion found it gone, so its deletion is its latest change (snapshots version it). A
    row back after a deletion (restored, or its key reused) takes the time ingestion found it back
    when its own updated_at is older, so its return is a change too.
#}
{% macro raw_row_status(updated_at='updated_at') -%}
    coalesce(_is_deleted, false) as is_deleted,
    {{ to_utc('case when _is_deleted then _deleted_at else greatest(' ~ updated_at ~ ', _restored_at) end') }}
        as updated_at,
    {{ to_utc('_deleted_at') }} as deleted_at,
    _dlt_load_id as dlt_load_id
{%- endmacro %}
