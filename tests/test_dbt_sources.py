"""dbt's source definitions cannot drift from ingestion/sources.yml."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dusk.dbt_sources import STAGING_DIR, check_dbt_sources
from ingestion.declaration import ConfigError
from tests.helpers import sources


def test_repository_sources_agree() -> None:
    check_dbt_sources(sources())


def test_a_table_missing_from_dbt_is_reported(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    shutil.copytree(STAGING_DIR, staging)
    sources_yml = staging / "shop" / "_shop__sources.yml"
    text = sources_yml.read_text()
    sources_yml.write_text(
        text.replace("schema: raw_shop", "schema: raw_store").replace("- name: products", "- name: goods")
    )
    with pytest.raises(ConfigError) as err:
        check_dbt_sources(sources(), staging)
    message = str(err.value)
    assert "schema is 'raw_store', dlt loads 'raw_shop'" in message
    assert "'goods'" in message and "'products'" in message
