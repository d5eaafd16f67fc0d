{#
    PII in staging: a column tagged `pii` in the model's YAML is replaced by a salted SHA-256
    (64 hex characters), so marts can still join and count on it but nobody downstream reads the
    value. `pii(column, expression)` renders `expression` (the cleaned value) or its hash: the
    YAML tag, not the SQL, decides. The salt never appears in SQL, logs or artifacts: the runner
    writes it (from DUSK_PII_SALT or the git-ignored data/secrets/pii_salt) into the warehouse
    table dusk_private.pii_salt, and the hash reads it from there.
#}
{% macro pii(column_name, expression=none) -%}
    {%- set value = expression if expression is not none else column_name -%}
    {%- if column_name in pii_columns() -%}
        {{ pii_hash(value) }}
    {%- else -%}
        {{ value }}
    {%- endif -%}
{%- endmacro %}

{# The names of the current model's columns tagged `pii` in its YAML. #}
{% macro pii_columns() -%}
    {%- set names = [] -%}
    {%- for name, column in model.columns.items() -%}
        {%- set tags = (column.tags or []) + ((column.config or {}).get('tags') or []) -%}
        {%- if 'pii' in tags -%}
            {%- do names.append(name) -%}
        {%- endif -%}
    {%- endfor -%}
    {{ return(names) }}
{%- endmacro %}

{# The salted hash of a text expression; null stays null. #}
{% macro pii_hash(expression) -%}
    {#- compiling (dbt compile, sqlfluff) needs no salt; building does -#}
    {%- if execute and flags.WHICH in ('run', 'build') -%}
        {%- set salt = adapter.get_relation(database=target.database, schema='dusk_private', identifier='pii_salt') -%}
        {%- if salt is none -%}
            {{ exceptions.raise_compiler_error(
                "PII salt missing: table dusk_private.pii_salt does not exist in the warehouse. "
                ~ "Run `python -m dusk pii-salt` (it reads DUSK_PII_SALT, or creates the git-ignored "
                ~ "data/secrets/pii_salt) or `make run` once before building with the dbt CLI."
            ) }}
        {%- endif -%}
    {%- endif -%}
    {{ return(adapter.dispatch('pii_hash', 'dusk')(expression)) }}
{%- endmacro %}

{% macro default__pii_hash(expression) -%}
    sha256((select pii_salt.salt from dusk_private.pii_salt) || {{ expression }})
{%- endmacro %}

{% macro postgres__pii_hash(expression) -%}
    encode(sha256(convert_to((select pii_salt.salt from dusk_private.pii_salt) || {{ expression }}, 'UTF8')), 'hex')
{%- endmacro %}

{% macro spark__pii_hash(expression) -%}
    sha2((select pii_salt.salt from dusk_private.pii_salt) || {{ expression }}, 256)
{%- endmacro %}
