{#
    A phone number in E.164 (`+<country code><number>`), from the ways people type it:
    international (`+49 30 1234567`), with the `00` prefix, or national with the trunk prefix
    (`030/1234567`, `1 (212) 555 1234`) or without it; separators are ignored. The country's
    calling code and trunk prefix come from the `countries` seed. A value with no digits, or a
    result outside E.164's 8 to 15 digits, becomes null (raw keeps what was typed).
#}
{% macro standardize_phone(phone, calling_code, trunk_prefix) -%}
    {#- 'g' (every match) is DuckDB's and PostgreSQL's flag; Spark replaces every match and reads a 4th argument as a position -#}
    {%- set flags = "" if target.type == 'spark' else ", 'g'" -%}
    {%- set digits = "regexp_replace(" ~ phone ~ ", '[^0-9]', ''" ~ flags ~ ")" -%}
    {%- set e164 -%}
        case
            when length({{ digits }}) < 7 then null
            when trim({{ phone }}) like '+%' then '+' || {{ digits }}
            when {{ digits }} like '00%' then '+' || substr({{ digits }}, 3)
            when {{ calling_code }} is null then null
            when {{ trunk_prefix }} is not null and {{ digits }} like {{ trunk_prefix }} || '%'
                then '+' || {{ calling_code }} || substr({{ digits }}, length({{ trunk_prefix }}) + 1)
            else '+' || {{ calling_code }} || {{ digits }}
        end
    {%- endset -%}
    case when length({{ e164 }}) between 9 and 16 then {{ e164 }} end
{%- endmacro %}
