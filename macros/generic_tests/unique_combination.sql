{#
    Fails for every combination of `columns` that appears more than once: the grain of a model
    whose key spans several columns (e.g. day and channel).
#}
{% test unique_combination(model, columns) %}

select
    {{ columns | join(', ') }},
    count(*) as row_count
from {{ model }}
group by {{ columns | join(', ') }}
having count(*) > 1

{% endtest %}
