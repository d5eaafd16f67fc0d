{#
    Fails for every row where `expression` is not true (a NULL result counts as not true).
    Use it for row-level rules no built-in test expresses, e.g. `amount = quantity * unit_price`;
    on a column it is the same test (`column_name` is only where it is listed).
#}
{% test expression_is_true(model, expression, column_name=none) %}

select *
from {{ model }}
where not coalesce(({{ expression }}), false)

{% endtest %}
