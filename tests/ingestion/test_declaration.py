"""sources.yml: the shipped file is valid, and mistakes are reported naming the entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestion.declaration import ConfigError, load_sources

FILES_TABLE = "sources:\n  src:\n    kind: files\n    tables:\n      t:\n        pattern: 'x*'\n"
"""A files source's table, its lines to be followed by the test's own (indented 8)."""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sources.yml"
    path.write_text(text)
    return path


def test_shipped_sources_file_declares_the_shop() -> None:
    shop = load_sources()["shop"]
    assert shop.dataset == "raw_shop"
    assert {t.name for t in shop.tables} == {"customers", "products", "orders", "order_items", "stock_levels"}
    assert shop.table("orders").key_columns == ["order_id"]
    assert shop.table("stock_levels").key_columns == ["product_id", "warehouse_code"]
    assert all(t.cursor == "updated_at" and t.deletes == "key_diff" for t in shop.tables)


@pytest.mark.badinput
@pytest.mark.parametrize(
    ("table_yaml", "message"),
    [
        ("customers; drop table x:\n        primary_key: id", "sources.shop.tables.customers; drop table x"),
        ("customers:\n        cursor: updated_at", "sources.shop.tables.customers: primary_key is required"),
        ('customers:\n        primary_key: "id) or (1=1"', "sources.shop.tables.customers.primary_key"),
        (
            "customers:\n        primary_key: id\n        write_disposition: append\n        deletes: key_diff",
            "key_diff needs write_disposition: merge",
        ),
        ("customers:\n        primary_key: id\n        write_disposition: upsert", "write_disposition: 'upsert'"),
        (
            "customers:\n        primary_key: id\n        cursro: updated_at",
            "customers.cursro: unknown key 'cursro' (did you mean cursor?)",
        ),
        ("customers:\n        primary_key: id\n        cursor: updated_at\n        lag: -5", "lag: seconds"),
        ("customers:\n        primary_key: id\n        lag: 60", "customers.lag: needs a cursor"),
        (
            "customers:\n        primary_key: id\n        columns: {amount: double}",
            "customers.columns.amount: a database column's type may be set to text",
        ),
        ("customers:\n        primary_key: id\n        columns: {amount: decimal(40,2)}", "s <= p <= 38"),
        ('customers:\n        primary_key: id\n        schema: "x; drop"', "customers.schema: 'x; drop'"),
        (
            "customers:\n        primary_key: id\n        cursor: updated_at\n        deletes: cdc",
            "deletes: cdc takes no cursor",
        ),
        (
            "customers:\n        primary_key: id\n        write_disposition: replace\n        deletes: cdc",
            "cdc needs write_disposition: merge",
        ),
    ],
)
def test_bad_declarations_name_the_entry(tmp_path: Path, table_yaml: str, message: str) -> None:
    path = write(tmp_path, f"sources:\n  shop:\n    kind: database\n    tables:\n      {table_yaml}\n")
    with pytest.raises(ConfigError) as err:
        load_sources(path)
    assert message in str(err.value)


def test_lag_is_read_in_seconds(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "sources:\n  shop:\n    kind: database\n    tables:\n      t:\n        primary_key: id\n"
        "        cursor: updated_at\n        lag: 3600\n",
    )
    assert load_sources(path)["shop"].table("t").lag_seconds == 3600.0


def test_cdc_slot_and_publication_default_to_the_source_name(tmp_path: Path) -> None:
    table = "    tables:\n      t:\n        primary_key: id\n        deletes: cdc\n"
    path = write(tmp_path, f"sources:\n  crm:\n    kind: database\n{table}")
    crm = load_sources(path)["crm"]
    assert (crm.cdc_slot, crm.cdc_publication, crm.table("t").deletes) == ("dusk_crm", "dusk_crm", "cdc")
    path = write(tmp_path, f"sources:\n  crm:\n    kind: database\n    cdc:\n      slot: crm_slot\n{table}")
    assert load_sources(path)["crm"].cdc_slot == "crm_slot"
    path = write(tmp_path, f"sources:\n  crm:\n    kind: database\n    cdc:\n      slto: x\n{table}")
    with pytest.raises(ConfigError, match=r"line 5: sources.crm.cdc.slto: unknown key 'slto' \(did you mean slot\?\)"):
        load_sources(path)


@pytest.mark.badinput
@pytest.mark.parametrize(
    ("source_yaml", "message"),
    [
        ("kind: files\n    tables:\n      t:\n        primary_key: id", "t: pattern is required for a files source"),
        (
            "kind: files\n    tables:\n      t:\n        pattern: 'x*'\n        columns: {a: money}",
            "t.columns.a: type 'money' is not one of",
        ),
        (
            "kind: files\n    tables:\n      t: {pattern: 'x*', primary_key: b, columns: {a: text}}",
            "t.primary_key: ['b'] not among the declared columns",
        ),
        ("kind: api\n    tables:\n      t:\n        primary_key: id", "t: path is required for a api source"),
        (
            "kind: api\n    tables:\n      t:\n        primary_key: id\n        path: t\n        cursor: u",
            "cursor_param (the query parameter that takes the cursor) is required",
        ),
        (
            "kind: api\n    api: {timeout: -1}\n    tables:\n      t: {primary_key: id, path: t}",
            "api.timeout: a number > 0",
        ),
        (
            "kind: api\n    api: {retries: 3}\n    tables:\n      t: {primary_key: id, path: t}",
            "api.retries: unknown key 'retries' (known: ",
        ),
        ("kind: stream\n    tables:\n      t: {primary_key: id, columns: {id: text}}", "subject is required"),
        (
            "kind: files\n    files: {archive: 'yes'}\n    tables:\n      t: {pattern: x, columns: {a: text}}",
            "true or false",
        ),
        ("kind: ftp\n    tables:\n      t: {primary_key: id}", "'ftp' is not one of database, api, files, stream"),
    ],
)
def test_bad_api_file_and_stream_declarations_name_the_entry(tmp_path: Path, source_yaml: str, message: str) -> None:
    path = write(tmp_path, f"sources:\n  src:\n    {source_yaml}\n")
    with pytest.raises(ConfigError) as err:
        load_sources(path)
    assert message in str(err.value)


def test_the_shipped_demo_declares_an_api_files_and_a_stream() -> None:
    sources = load_sources()
    assert {name: s.kind for name, s in sources.items()} == {
        "shop": "database",
        "payments": "api",
        "marketing": "files",
        "web": "stream",
    }
    assert sources["marketing"].table("marketing_spend").key_columns == ["spend_date", "channel"]
    assert sources["payments"].option("breaker_failures") == 8
    assert sources["web"].option("ack_wait") == 300


@pytest.mark.badinput
def test_a_mistake_points_at_its_line_and_shows_the_corrected_form(tmp_path: Path) -> None:
    """A decimal written in a flow mapping with a space is split by YAML into two columns; the
    error names the line and the quoted form that works."""
    path = write(
        tmp_path,
        FILES_TABLE + "        columns: {id: text, amount: decimal(12, 2)}\n",
    )
    with pytest.raises(ConfigError) as err:
        load_sources(path)
    assert str(err.value).splitlines() == [
        "sources.yml, line 7: sources.src.tables.t.columns.amount: type 'decimal(12' is not one of text, integer, "
        "bigint, double, boolean, date, timestamp, json, decimal(p,s); write it quoted, with no space: "
        'amount: "decimal(12,2)"',
        "     7 |         columns: {id: text, amount: decimal(12, 2)}",
    ]


@pytest.mark.badinput
def test_broken_yaml_names_the_line_where_the_bracket_opened(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        FILES_TABLE + "        columns:\n          amount: [decimal(12,2)\n          id: text\n",
    )
    with pytest.raises(ConfigError) as err:
        load_sources(path)
    message = str(err.value)
    assert message.startswith("sources.yml, line 8: not valid YAML (while parsing a flow sequence")
    assert 'must be quoted, e.g. amount: "decimal(12,2)"' in message
    assert "     8 |           amount: [decimal(12,2)" in message


@pytest.mark.badinput
def test_a_mistyped_type_or_choice_is_named_with_the_nearest_known_one(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        FILES_TABLE + "        columns: {day: timestmp}\n",
    )
    with pytest.raises(ConfigError, match=r"line 7: .*type 'timestmp' .* \(did you mean timestamp\?\)"):
        load_sources(path)
    path = write(tmp_path, "sources:\n  src:\n    kind: databse\n    tables:\n      t: {primary_key: id}\n")
    with pytest.raises(
        ConfigError, match=r"line 3: sources.src.kind: 'databse' is not one .* \(did you mean database\?\)"
    ):
        load_sources(path)


@pytest.mark.badinput
def test_freshness_is_declared_in_dbt_and_an_sla_here_is_refused_with_the_dbt_form(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "sources:\n  shop:\n    kind: database\n    sla: {hours: 26}\n    tables:\n      t: {primary_key: id}\n",
    )
    with pytest.raises(ConfigError) as err:
        load_sources(path)
    message = str(err.value)
    assert message.startswith("sources.yml, line 4: sources.shop.sla: a source's freshness is declared once, in dbt")
    assert "warn_after: {count: 26, period: hour}" in message and "models/staging/shop/_shop__sources.yml" in message
