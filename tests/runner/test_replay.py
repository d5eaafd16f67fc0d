"""`dusk replay`: dead letters (file rows, stream messages kept in raw_<source>._quarantine) fed
back through the same checks after a fix; each marked replayed, still bad or superseded (a newer
row for its key is in raw already, so the old one must not come back) with the replay that did
it; replayed rows reach staging with the next night."""

from __future__ import annotations

import json

import duckdb
import pytest

from tests.conftest import Workspace

pytestmark = pytest.mark.e2e

SPEND = (
    "spend_date,channel,spend,clicks,currency_code\n"
    "2020-01-01,search,10.00,1,USD\n"
    "2020-01-01,social,ten,2,USD\n"  # line 3: not a number: corrected by hand below
    "2020-01-01,email,1.005,3,USD\n"  # line 4: would be rounded: left as it is (still bad)
    "2020-01-01,display,5.00\n"  # line 5: a field short: corrected by hand below
    "2020-01-02,search,7.00,2.5,USD\n"  # line 6: clicks would be rounded; a later file has the key
    # good rows enough that the bad ones stay under the demo's max_bad_share (0.4)
    + "".join(f"2020-01-1{day},affiliate,1.00,1,USD\n" for day in range(7))
)


@pytest.mark.badinput
def test_dead_letters_are_replayed_after_a_fix_and_reach_staging(workspace: Workspace) -> None:
    ws = workspace
    landing = ws.data_dir / "landing"
    landing.mkdir(parents=True, exist_ok=True)
    (landing / "marketing_spend_2020-01-01.csv").write_text(SPEND)
    ws.cli("run", check=False)  # the demo's night, with our file's four bad rows kept as dead letters
    export = ws.root / "dead.jsonl"
    out = ws.cli("replay", "marketing", "--table", "marketing_spend", "--export", str(export))
    assert "marketing: 4 pending dead letter(s) written to" in out.stdout, out.stdout
    lines = [json.loads(line) for line in export.read_text().splitlines()]
    by_line = {int(d["dead_letter"].rsplit(":", 1)[1]): d for d in lines}
    assert by_line[3]["reason"] == 'column spend: "ten" is not a decimal(12,2)'
    assert "it would be rounded" in by_line[4]["reason"]
    assert by_line[5]["record"] == "2020-01-01,display,5.00"  # not a record: its text, to correct

    # a later file brings the key of line 6: its dead letter must not overwrite it
    (landing / "marketing_spend_2020-01-02.csv").write_text(
        "spend_date,channel,spend,clicks,currency_code\n2020-01-02,search,8.00,3,USD\n"
    )
    ws.cli("run", check=False)

    by_line[3]["record"]["spend"] = "10.50"
    by_line[5]["record"] = {
        "spend_date": "2020-01-01",
        "channel": "display",
        "spend": "5.00",
        "clicks": "4",
        "currency_code": "USD",
    }
    by_line[6]["record"]["clicks"] = "2"
    fixed = ws.root / "fixed.jsonl"
    fixed.write_text("".join(json.dumps(by_line[n]) + "\n" for n in (3, 4, 5, 6)))
    out = ws.cli("replay", "marketing", "--from", str(fixed), check=False)
    assert out.returncode == 3, out.stdout + out.stderr  # one is still bad
    assert "marketing.marketing_spend: 2 replayed, 1 still bad, 1 superseded" in out.stdout, out.stdout
    assert "it would be rounded" in out.stdout

    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:
        spend = wh.execute(
            "select channel, spend_date::varchar, spend::varchar, clicks, _file, _line "
            "from raw_marketing.marketing_spend where spend_date < '2020-01-03' order by 2, 1"
        ).fetchall()
        marks = wh.execute(
            "select split_part(dead_letter, ':', -1)::int, outcome, corrected from raw_marketing._replays order by 1"
        ).fetchall()
    assert spend == [
        ("display", "2020-01-01", "5.00", 4, "marketing_spend_2020-01-01.csv", 5),
        ("search", "2020-01-01", "10.00", 1, "marketing_spend_2020-01-01.csv", 2),
        ("social", "2020-01-01", "10.50", 2, "marketing_spend_2020-01-01.csv", 3),
        ("search", "2020-01-02", "8.00", 3, "marketing_spend_2020-01-02.csv", 2),  # the newer row stays
    ]
    assert marks == [(3, "replayed", True), (4, "still bad", True), (5, "replayed", True), (6, "superseded", True)]

    out = ws.cli("replay", "marketing", "--table", "marketing_spend", "--export", str(export))
    assert "marketing: 1 pending dead letter(s)" in out.stdout  # only the one still bad
    out = ws.cli("replay", "marketing", "--table", "marketing_spend", check=False)
    assert out.returncode == 3 and "0 replayed, 1 still bad, 0 superseded" in out.stdout, out.stdout

    ws.cli("run", check=False)  # the next night builds the replayed rows
    with duckdb.connect(str(ws.warehouse), read_only=True) as wh:
        staged = wh.execute(
            "select channel, spend::varchar from staging.stg_marketing__marketing_spend "
            "where spend_date = '2020-01-01' order by 1"
        ).fetchall()
    assert staged == [("display", "5.00"), ("search", "10.00"), ("social", "10.50")]


def test_what_keeps_no_dead_letters_is_refused_naming_why(workspace: Workspace) -> None:
    out = workspace.cli("replay", "shop", check=False)
    assert out.returncode == 1 and "keeps no dead letters" in out.stderr, out.stderr
    out = workspace.cli("replay", "marketing", "--table", "invoices", check=False)
    assert out.returncode == 1 and "declares no table invoices" in out.stderr, out.stderr
