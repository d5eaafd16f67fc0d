{#
    dbt's data test materialization on Spark, storing only what failed. dbt's own, with
    `store_failures`, drops and creates a table for every test and then counts its rows: on
    Iceberg each is a commit, and a passing test costs four statements instead of one (most of a
    demo night's dbt time on Spark). Here the test's count runs first, on the test's query; only a
    test that warns or fails keeps its failing rows in `test_failures` (as dbt's own does), and a
    passing test drops the rows an earlier night kept, so no stored table outlives its failure.
#}
{%- materialization test, adapter="spark" -%}

  {% set relations = [] %}
  {% set limit = config.get('limit') %}
  {% set sql_header = config.get('sql_header') if flags.REQUIRE_SQL_HEADER_IN_TEST_CONFIGS else none %}
  {% set sql_with_limit %}
    {{ get_limit_subquery_sql(sql, limit) }}
  {% endset %}

  {% call statement('main', fetch_result=True) -%}
    {% if sql_header %}{{ sql_header }}{% endif %}
    {{ get_test_sql(sql_with_limit, config.get('fail_calc'), config.get('warn_if'), config.get('error_if'), limit=none) }}
  {%- endcall %}

  {% if should_store_failures() %}
    {% set outcome = load_result('main').table.rows[0] %}
    {% set old_relation = adapter.get_relation(database=database, schema=schema, identifier=model['alias']) %}
    {% if old_relation %}
      {% do adapter.drop_relation(old_relation) %}
    {% endif %}
    {% if outcome['should_warn'] or outcome['should_error'] %}
      {% set target_relation = api.Relation.create(
          identifier=model['alias'], schema=schema, database=database, type='table') %}
      {% call statement('store_failures') %}
        {% if sql_header %}{{ sql_header }}{% endif %}
        {{ get_create_sql(target_relation, sql_with_limit) }}
      {% endcall %}
      {% do relations.append(target_relation) %}
    {% endif %}
  {% endif %}

  {{ return({'relations': relations}) }}

{%- endmaterialization -%}
