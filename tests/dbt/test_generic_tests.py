"""The project's custom generic tests (macros/generic_tests), each shown passing on good data and
failing on bad data, with the number of failing rows, in a throwaway dbt project on DuckDB that
uses the project's own macros."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
import yaml
from dbt.cli.main import dbtRunner

from dusk.settings import PROJECT_DIR

SEEDS = {
    "amounts": "id,quantity,unit_price,amount\n1,2,1.50,3.00\n2,1,4.00,4.00\n3,3,2.00,5.00\n4,2,1.00,\n",
    "events": "id,happened_at\n1,2000-01-01 00:00:00\n2,2000-01-02 00:00:00\n",
    "fresh_events": "id,happened_at\n1,2999-01-01 00:00:00\n",
    "raw_rows": "id,is_valid\n1,true\n2,true\n3,false\n4,false\n",
    "staged_rows": "id\n1\n2\n",
    "quarantined_rows": "id\n3\n",
    "history": (
        "customer_id,valid_from,valid_to\n"
        "1,2026-01-01,2026-01-05\n1,2026-01-05,\n"  # fine
        "2,2026-01-01,2026-01-05\n2,2026-01-04,\n"  # overlap
        "3,2026-01-01,2026-01-03\n3,2026-01-04,\n"  # gap
        "4,2026-01-01,\n4,2026-01-02,\n"  # two open versions
        "5,2026-01-03,2026-01-02\n"  # ends before it starts
    ),
}

TESTS: dict[str, list[dict[str, Any]]] = {
    "amounts": [
        {"name": "pass_expression", "test": {"expression_is_true": {"expression": "quantity > 0"}}},
        {"name": "fail_expression", "test": {"expression_is_true": {"expression": "amount = quantity * unit_price"}}},
        {"name": "pass_range", "column": "quantity", "test": {"accepted_range": {"min_value": 1, "max_value": 3}}},
        {
            "name": "fail_range",
            "column": "unit_price",
            "test": {"accepted_range": {"min_value": 1.5, "max_value": 4, "inclusive": False}},
        },
    ],
    "history": [
        {
            "name": "fail_scd2",
            "test": {"scd2_valid_ranges": {"key": "customer_id", "valid_from": "valid_from", "valid_to": "valid_to"}},
        },
        {"name": "pass_unique_combination", "test": {"unique_combination": {"columns": ["customer_id", "valid_from"]}}},
        {"name": "fail_unique_combination", "test": {"unique_combination": {"columns": ["customer_id"]}}},
    ],
    "events": [
        {"name": "fail_recency", "test": {"recency": {"field": "happened_at", "datepart": "day", "interval": 2}}}
    ],
    "fresh_events": [
        {"name": "pass_recency", "test": {"recency": {"field": "happened_at", "datepart": "day", "interval": 2}}}
    ],
    "staged_rows": [
        {"name": "pass_equal_rowcount", "test": {"equal_rowcount": {"compare_model": "ref('staged_rows')"}}},
        {"name": "fail_equal_rowcount", "test": {"equal_rowcount": {"compare_model": "ref('raw_rows')"}}},
    ],
    "raw_rows": [
        {
            "name": "pass_reconciles",
            "test": {
                "rowcount_reconciles": {
                    "model_where": "id <= 3",
                    "parts": [{"relation": "{{ ref('staged_rows') }}"}, {"relation": "{{ ref('quarantined_rows') }}"}],
                }
            },
        },
        {
            "name": "fail_reconciles",
            "test": {
                "rowcount_reconciles": {
                    "parts": [
                        {"relation": "{{ ref('staged_rows') }}"},
                        {"relation": "{{ ref('quarantined_rows') }}", "where": "id > 0"},
                    ]
                }
            },
        },
    ],
}

EXPECTED = {  # test name -> failing rows (0: passes)
    "pass_expression": 0,
    "fail_expression": 2,  # row 3 (wrong amount) and row 4 (NULL amount)
    "pass_range": 0,
    "fail_range": 3,  # 1.50 and 4.00 sit on the excluded bounds, 1.00 is below
    "fail_recency": 1,
    "pass_recency": 0,
    "pass_equal_rowcount": 0,
    "fail_equal_rowcount": 1,
    "pass_reconciles": 0,
    "fail_reconciles": 1,
    "fail_scd2": 4,  # customer 2 overlaps, 3 has a gap, 4 has an open version before another, 5 is reversed
    "pass_unique_combination": 0,
    "fail_unique_combination": 4,  # customers 1 to 4 have two rows each
}


def _schema() -> dict[str, Any]:
    seeds = []
    for seed, tests in TESTS.items():
        model_tests, columns = [], {}
        for t in tests:
            (name, args) = next(iter(t["test"].items()))
            entry = {name: {"name": t["name"], "arguments": args}}
            if "column" in t:
                columns.setdefault(t["column"], []).append(entry)
            else:
                model_tests.append(entry)
        seeds.append(
            {
                "name": seed,
                "data_tests": model_tests,
                "columns": [{"name": c, "data_tests": ts} for c, ts in columns.items()],
            }
        )
    seeds += [{"name": s} for s in SEEDS if s not in TESTS]
    return {"version": 2, "seeds": seeds}


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, int]]:
    root = tmp_path_factory.mktemp("dbt_tests")
    shutil.copytree(PROJECT_DIR / "macros", root / "macros")
    (root / "seeds").mkdir()
    for name, text in SEEDS.items():
        (root / "seeds" / f"{name}.csv").write_text(text)
    (root / "seeds" / "_seeds.yml").write_text(yaml.safe_dump(_schema(), sort_keys=False))
    (root / "dbt_project.yml").write_text(
        "name: generic_tests\nversion: '1.0'\nconfig-version: 2\nprofile: generic_tests\n"
        "flags: {send_anonymous_usage_stats: false}\n"
    )
    (root / "profiles.yml").write_text(
        "generic_tests:\n  target: dev\n  outputs:\n    dev:\n"
        f"      type: duckdb\n      path: '{root / 'tests.duckdb'}'\n      schema: main\n      threads: 1\n"
    )
    run = dbtRunner().invoke(
        ["build", "--project-dir", str(root), "--profiles-dir", str(root), "--target-path", str(root / "target")]
    )
    assert run.result is not None, run.exception
    return {
        r.node.name: (str(r.status), int(r.failures or 0)) for r in run.result.results if r.node.resource_type == "test"
    }


@pytest.mark.parametrize("test", sorted(EXPECTED))
def test_custom_generic_test(results: dict[str, tuple[str, int]], test: str) -> None:
    status, failures = results[test]
    if EXPECTED[test]:
        assert (status, failures) == ("fail", EXPECTED[test])
    else:
        assert status == "pass", (status, failures)
