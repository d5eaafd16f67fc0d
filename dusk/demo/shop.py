"""The demo shop: a seeded, deterministic OLTP database and a simulator that advances it by days.

The shop has customers, products, orders, order items and stock levels (keyed by product and
warehouse: a composite primary key), each with ``updated_at``. Every simulated day applies inserts,
updates (customer tier/address/e-mail, product prices, order statuses, stock counts), hard deletes,
some days a deleted customer or stock line restored as it was (its ``updated_at`` older than its
deletion), rows sharing one timestamp (ties at the watermark) and a few invalid rows. The same
seed always gives the same shop. A composite key is recorded in the truth file as its columns'
values joined by ``|`` (``12|AMS``).

Ground truth for the tests is written to a separate SQLite file (``truth.sqlite``): every change
per day and table, every version of every customer, and every invalid row with the rule it breaks.
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa

START = datetime(2026, 1, 1)
"""Midnight of simulated day 1; the initial shop is created in the 90 days before it."""

CURRENCY = "USD"
"""The catalogue's currency; the initial orders are in it too."""
ORDER_CURRENCIES = {"US": "USD", "DE": "EUR", "FR": "EUR", "NL": "EUR", "GB": "GBP"}
"""From day 1 an order is in the currency of the customer's country, priced at DEMO_RATES."""
DEMO_RATES = {"USD": Decimal("1"), "EUR": Decimal("0.92"), "GBP": Decimal("0.79")}
"""Units of the currency per USD the shop uses to price its catalogue abroad."""
CHANNELS = ("search", "social", "email", "display", None)
"""The marketing channel an order came through (None: direct traffic)."""
PHONE_CODES = {"US": "1", "DE": "49", "FR": "33", "GB": "44", "NL": "31"}
TIERS = ("bronze", "silver", "gold", "platinum")
COUNTRIES = {
    "US": ("New York", "Austin", "Seattle", "Denver"),
    "DE": ("Berlin", "Hamburg", "Munich"),
    "FR": ("Paris", "Lyon"),
    "GB": ("London", "Leeds"),
    "NL": ("Amsterdam", "Utrecht"),
}
FIRST_NAMES = ("Ada", "Ben", "Chloe", "Dev", "Eva", "Finn", "Grace", "Hugo", "Iris", "Jonas", "Kai", "Lena")
LAST_NAMES = ("Smith", "Meyer", "Dubois", "Jones", "de Vries", "Garcia", "Novak", "Rossi", "Berg", "Kim")
CATEGORIES = ("kitchen", "garden", "books", "toys", "outdoor", "office")
WAREHOUSES = ("AMS", "LDN", "NYC")

metadata = sa.MetaData()

customers = sa.Table(
    "customers",
    metadata,
    sa.Column("customer_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("first_name", sa.String(50), nullable=False),
    sa.Column("last_name", sa.String(50), nullable=False),
    sa.Column("email", sa.String(120)),
    sa.Column("phone", sa.String(30)),
    sa.Column("country_code", sa.String(2)),
    sa.Column("city", sa.String(60)),
    sa.Column("tier", sa.String(10), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False, index=True),
)
products = sa.Table(
    "products",
    metadata,
    sa.Column("product_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("sku", sa.String(20), nullable=False),
    sa.Column("product_name", sa.String(100), nullable=False),
    sa.Column("category", sa.String(40), nullable=False),
    sa.Column("unit_price", sa.Numeric(10, 2), nullable=False),
    sa.Column("currency_code", sa.String(3), nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False, index=True),
)
orders = sa.Table(
    "orders",
    metadata,
    sa.Column("order_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("customer_id", sa.Integer, nullable=False),
    sa.Column("status", sa.String(12), nullable=False),
    sa.Column("currency_code", sa.String(3), nullable=False),
    sa.Column("channel", sa.String(20)),
    sa.Column("ordered_at", sa.DateTime, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False, index=True),
)
order_items = sa.Table(
    "order_items",
    metadata,
    sa.Column("order_item_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("order_id", sa.Integer, nullable=False),
    sa.Column("product_id", sa.Integer, nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("unit_price", sa.Numeric(10, 2), nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False, index=True),
)
stock_levels = sa.Table(
    "stock_levels",
    metadata,
    sa.Column("product_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("warehouse_code", sa.String(3), primary_key=True),
    sa.Column("quantity_on_hand", sa.Integer, nullable=False),
    sa.Column("updated_at", sa.DateTime, nullable=False, index=True),
)
demo_marker = sa.Table(
    "dusk_demo_marker",
    metadata,
    sa.Column("seed", sa.Integer, nullable=False),
    sa.Column("note", sa.String(120), nullable=False),
)
"""Only the demo writes this table: the simulator touches no database without it."""
TABLES = {t.name: t for t in (customers, products, orders, order_items, stock_levels)}
ADDED_TABLES = (stock_levels,)
"""Tables added to the shop after its first version: an older demo shop gets them on its next run."""
PRIMARY_KEYS = {name: tuple(c.name for c in t.primary_key.columns) for name, t in TABLES.items()}
"""Each table's primary key columns, in order."""


def key_of(table: str, row: Any) -> int | str:
    """A row's key as the truth file records it: the value, or the values joined by ``|``."""
    values = [row[c] for c in PRIMARY_KEYS[table]]
    return values[0] if len(values) == 1 else "|".join(str(v) for v in values)


TRUTH_SCHEMA = """
create table if not exists sim_days (day integer primary key, sim_date text not null, seed integer not null);
create table if not exists changes (
    day integer not null, table_name text not null, pk integer not null, op text not null,
    primary key (day, table_name, pk, op)
);
create table if not exists customer_versions (
    customer_id integer not null, day integer not null, updated_at text not null,
    first_name text, last_name text, email text, country_code text, city text, tier text,
    is_deleted integer not null
);
create table if not exists deleted_customers (
    customer_id integer not null, day integer not null, row text not null
);
create table if not exists deleted_stock (
    stock_key text not null, day integer not null, row text not null
);
create table if not exists invalid_rows (
    day integer not null, table_name text not null, pk integer not null, rule text not null
);
"""


@dataclass
class DayLog:
    """What one simulated day did, for the truth file and the command's output."""

    day: int
    changes: list[tuple[str, int | str, str]] = field(default_factory=list)
    customer_versions: list[dict[str, Any]] = field(default_factory=list)
    deleted_customers: list[dict[str, Any]] = field(default_factory=list)
    """Whole rows of the customers deleted this day (a later day may restore one)."""
    invalid: list[tuple[str, int | str, str]] = field(default_factory=list)
    deleted_stock: list[dict[str, Any]] = field(default_factory=list)
    """Whole rows of the stock lines deleted this day (a later day may restore one)."""

    def count(self, table: str, op: str) -> int:
        """How many rows of ``table`` this day changed with ``op`` (insert, update, delete, restore)."""
        return len({pk for t, pk, o in self.changes if t == table and o == op})


class Shop:
    """The demo shop's source database (any SQLAlchemy URL) and its ground-truth file."""

    def __init__(self, url: str, truth_path: Path, seed: int = 42, scale: int = 1) -> None:
        self.url = url
        self.engine = sa.create_engine(url)
        self.truth_path = truth_path
        self.seed = seed
        self.scale = max(1, scale)
        """A shop ``scale`` times the demo's size (DUSK_DEMO_SCALE): its tables on creation and
        each day's activity, so a day changes the same share of it at every scale."""

    # ----------------------------------------------------------------- state
    def is_demo_database(self) -> bool:
        """True when the database carries the demo's marker table, i.e. the demo created it."""
        return sa.inspect(self.engine).has_table(demo_marker.name)

    def exists(self) -> bool:
        """True when this database is a demo shop and the truth file records its day 0."""
        if not self.truth_path.exists() or not self.is_demo_database():
            return False
        return self.last_day() is not None

    def last_day(self) -> int | None:
        """The last simulated day (0 after creation), from the truth file."""
        with sqlite3.connect(self.truth_path) as con:
            con.executescript(TRUTH_SCHEMA)
            (day,) = con.execute("select max(day) from sim_days").fetchone()
        return None if day is None else int(day)

    def dispose(self) -> None:
        """Close the connection pool."""
        self.engine.dispose()

    # ----------------------------------------------------------------- create
    @property
    def safe_url(self) -> str:
        """The connection URL with any password masked, for messages."""
        return self.engine.url.render_as_string(hide_password=True)

    def create(self, customers_n: int = 1000, products_n: int = 200, orders_n: int = 3000) -> DayLog:
        """Create the tables and fill them with day 0 (each count times the shop's scale).

        Refuses to touch a database that has shop tables but not the demo's marker table: that
        is somebody's real database, never ours to drop."""
        existing = sorted(set(TABLES) & set(sa.inspect(self.engine).get_table_names()))
        if existing and not self.is_demo_database():
            raise RuntimeError(
                f"refusing to create the demo shop in {self.safe_url}: it already has tables {existing} "
                "that the demo did not create. If this is a real database, set DUSK_DEMO=0."
            )
        rng = random.Random(f"{self.seed}:0")
        customers_n, products_n, orders_n = (n * self.scale for n in (customers_n, products_n, orders_n))
        metadata.drop_all(self.engine)
        metadata.create_all(self.engine)
        self.truth_path.parent.mkdir(parents=True, exist_ok=True)
        self.truth_path.unlink(missing_ok=True)
        log = DayLog(day=0)
        begin = START - timedelta(days=90)
        with self.engine.begin() as con:
            cust_rows = [
                _new_customer(rng, cid, begin + timedelta(seconds=rng.randrange(88 * 86400)))
                for cid in range(1, customers_n + 1)
            ]
            prod_rows = [
                _new_product(rng, pid, begin + timedelta(seconds=rng.randrange(10 * 86400)))
                for pid in range(1, products_n + 1)
            ]
            order_rows: list[dict[str, Any]] = []
            item_rows: list[dict[str, Any]] = []
            buyers = [c for c in cust_rows if c["customer_id"] % 5 != 0]  # every 5th only browses
            for oid in range(1, orders_n + 1):
                cust = rng.choice(buyers)
                at = cust["created_at"] + timedelta(seconds=rng.randrange(86400, 30 * 86400))
                at = min(at, START - timedelta(seconds=rng.randrange(1, 86400)))
                status = "delivered" if at < START - timedelta(days=4) else rng.choice(("placed", "shipped"))
                order = _new_order(oid, cust["customer_id"], at, channel=rng.choice(CHANNELS))
                order["status"] = status
                order_rows.append(order)
                item_rows.extend(_new_items(rng, len(item_rows) + 1, order, prod_rows))
            stock_rows = [row for p in prod_rows for row in _new_stock(rng, p)]
            con.execute(demo_marker.insert(), [{"seed": self.seed, "note": "created by dusk's demo shop"}])
            for table, rows in (
                (customers, cust_rows),
                (products, prod_rows),
                (orders, order_rows),
                (order_items, item_rows),
                (stock_levels, stock_rows),
            ):
                con.execute(table.insert(), rows)
                log.changes.extend((table.name, key_of(table.name, r), "insert") for r in rows)
            log.customer_versions.extend(_version(c, deleted=False) for c in cust_rows)
        self._write_truth(log, START - timedelta(days=1))
        return log

    # ----------------------------------------------------------------- simulate
    def simulate(self, days: int = 1) -> list[DayLog]:
        """Advance the shop by ``days`` simulated days; each day is one source transaction."""
        if not self.is_demo_database():
            raise RuntimeError(f"{self.safe_url} is not a demo shop database (no {demo_marker.name} table)")
        last = self.last_day()
        if last is None:
            raise RuntimeError(f"the demo shop at {self.safe_url} has no ground truth at {self.truth_path}")
        logs = []
        for day in range(last + 1, last + days + 1):
            day_start = START + timedelta(days=day - 1)
            log = DayLog(day=day)
            with self.engine.begin() as con:
                _Day(
                    con,
                    random.Random(f"{self.seed}:{day}"),
                    day_start,
                    log,
                    self._deleted_customers(),
                    self._deleted_stock(),
                    self.scale,
                ).play()
            self._write_truth(log, day_start)
            logs.append(log)
        return logs

    def _deleted_customers(self) -> dict[int, dict[str, Any]]:
        """The last deleted row of every customer ever deleted (whole rows, from the truth file)."""
        with sqlite3.connect(self.truth_path) as con:
            con.executescript(TRUTH_SCHEMA)
            rows = con.execute("select customer_id, row from deleted_customers order by day").fetchall()
        return {cid: _from_json(row) for cid, row in rows}

    def _deleted_stock(self) -> dict[str, dict[str, Any]]:
        """The last deleted row of every stock line ever deleted (by its key, ``12|AMS``)."""
        with sqlite3.connect(self.truth_path) as con:
            con.executescript(TRUTH_SCHEMA)
            rows = con.execute("select stock_key, row from deleted_stock order by day").fetchall()
        return {key: _from_json(row) for key, row in rows}

    def add_missing_tables(self) -> list[str]:
        """Create the tables a demo shop made by an earlier version lacks (:data:`ADDED_TABLES`),
        filled as day 0 would have filled them, recorded in the truth file as that day's inserts.
        Any other missing table is left missing: the night names it."""
        missing = [t for t in ADDED_TABLES if not sa.inspect(self.engine).has_table(t.name)]
        if not missing:
            return []
        metadata.create_all(self.engine, tables=missing)
        rng = random.Random(f"{self.seed}:0:stock")
        with self.engine.begin() as con:
            rows = [
                row
                for p in con.execute(sa.select(products).order_by("product_id")).mappings()
                for row in _new_stock(rng, p)
            ]
            con.execute(stock_levels.insert(), rows)
        with sqlite3.connect(self.truth_path) as con:
            con.executescript(TRUTH_SCHEMA)
            con.executemany(
                "insert or ignore into changes values (0, ?, ?, 'insert')",
                [("stock_levels", key_of("stock_levels", r)) for r in rows],
            )
        return [t.name for t in missing]

    def _write_truth(self, log: DayLog, sim_date: datetime) -> None:
        with sqlite3.connect(self.truth_path) as con:
            con.executescript(TRUTH_SCHEMA)
            con.executemany(
                "insert or ignore into changes values (?, ?, ?, ?)",
                [(log.day, t, pk, op) for t, pk, op in log.changes],
            )
            con.executemany(
                "insert into customer_versions values (:customer_id, :day, :updated_at, :first_name, "
                ":last_name, :email, :country_code, :city, :tier, :is_deleted)",
                [{**v, "day": log.day} for v in log.customer_versions],
            )
            con.executemany(
                "insert into deleted_customers values (?, ?, ?)",
                [(r["customer_id"], log.day, _to_json(r)) for r in log.deleted_customers],
            )
            con.executemany(
                "insert into deleted_stock values (?, ?, ?)",
                [(key_of("stock_levels", r), log.day, _to_json(r)) for r in log.deleted_stock],
            )
            con.executemany("insert into invalid_rows values (?, ?, ?, ?)", [(log.day, *i) for i in log.invalid])
            con.execute("insert into sim_days values (?, ?, ?)", (log.day, sim_date.date().isoformat(), self.seed))

    # ----------------------------------------------------------------- reading
    def row_counts(self) -> dict[str, int]:
        """Rows per table in the source now."""
        with self.engine.connect() as con:
            return {
                name: int(con.execute(sa.select(sa.func.count()).select_from(t)).scalar_one())
                for name, t in TABLES.items()
            }


class _Day:
    """One simulated day of shop activity inside one source transaction."""

    def __init__(
        self,
        con: sa.Connection,
        rng: random.Random,
        day_start: datetime,
        log: DayLog,
        deleted: dict[int, dict[str, Any]] | None = None,
        deleted_stock: dict[str, dict[str, Any]] | None = None,
        scale: int = 1,
    ) -> None:
        self.con, self.rng, self.start, self.log = con, rng, day_start, log
        self.scale = scale
        self.deleted_before = deleted or {}
        self.deleted_stock_before = deleted_stock or {}

    def at(self) -> datetime:
        """A random second of this day (whole seconds, so equal timestamps happen)."""
        return self.start + timedelta(seconds=self.rng.randrange(86400))

    def ids(self, query: sa.Select[Any]) -> list[int]:
        return [int(r[0]) for r in self.con.execute(query)]

    def next_id(self, table: sa.Table) -> int:
        pk = table.c[PRIMARY_KEYS[table.name][0]]
        return int(self.con.execute(sa.select(sa.func.coalesce(sa.func.max(pk), 0))).scalar_one()) + 1

    def record(self, table: str, pks: Iterable[int | str], op: str) -> None:
        self.log.changes.extend((table, pk, op) for pk in pks)

    def record_customers(self, ids: Iterable[int], deleted: bool = False) -> None:
        ids = list(ids)
        if not ids:
            return
        rows = self.con.execute(sa.select(customers).where(customers.c.customer_id.in_(ids))).mappings()
        by_id = {r["customer_id"]: dict(r) for r in rows}
        for cid in ids:
            self.log.customer_versions.append(_version(self.deleted_rows[cid] if deleted else by_id[cid], deleted))

    def play(self) -> None:
        self.deleted_rows: dict[int, dict[str, Any]] = {}
        self.new_customers()
        self.update_customers()
        self.delete_customers()
        self.restore_customer()
        self.change_prices()
        self.new_orders()
        self.advance_orders()
        self.delete_orders()
        self.remove_items()
        self.move_stock()

    def new_customers(self) -> None:
        first = self.next_id(customers)
        rows = [_new_customer(self.rng, first + i, self.at()) for i in range(15 * self.scale)]
        if self.rng.random() < 0.6:  # a bad sign-up: no usable e-mail address
            rows[-1]["email"] = self.rng.choice(("unknown", "n/a", " "))
            self.log.invalid.append(("customers", rows[-1]["customer_id"], "invalid_email"))
        self.con.execute(customers.insert(), rows)
        self.record("customers", (r["customer_id"] for r in rows), "insert")
        self.record_customers(r["customer_id"] for r in rows)

    def valid_customer_ids(self) -> list[int]:
        """Customers with a usable e-mail address: only they are updated and place orders."""
        return self.ids(sa.select(customers.c.customer_id).where(customers.c.email.like("%@%")).order_by("customer_id"))

    def update_customers(self) -> None:
        pool = self.valid_customer_ids()
        changed: dict[int, dict[str, Any]] = {}
        for cid in self.rng.sample(pool, 8 * self.scale):
            changed.setdefault(cid, {})["tier"] = self.rng.choice(TIERS)
        for cid in self.rng.sample(pool, 4 * self.scale):
            country = self.rng.choice(sorted(COUNTRIES))
            changed.setdefault(cid, {}).update(country_code=country, city=self.rng.choice(COUNTRIES[country]))
        for cid in self.rng.sample(pool, 3 * self.scale):
            changed.setdefault(cid, {})["email"] = f"  Customer.{cid}.{self.start:%m%d}@Example.COM "
        for cid, values in sorted(changed.items()):
            self.con.execute(
                customers.update().where(customers.c.customer_id == cid).values(**values, updated_at=self.at())
            )
        self.record("customers", changed, "update")
        self.record_customers(sorted(changed))

    def delete_customers(self) -> None:
        never_ordered = self.ids(
            sa.select(customers.c.customer_id)
            .where(~customers.c.customer_id.in_(sa.select(orders.c.customer_id)))
            .where(customers.c.email.like("%@%"))
            .order_by("customer_id")
        )
        gone = self.rng.sample(never_ordered, min(len(never_ordered), self.rng.randint(1, 2) * self.scale))
        rows = self.con.execute(sa.select(customers).where(customers.c.customer_id.in_(gone))).mappings()
        self.deleted_rows = {r["customer_id"]: dict(r) for r in rows}
        self.log.deleted_customers.extend(self.deleted_rows.values())
        self.con.execute(customers.delete().where(customers.c.customer_id.in_(gone)))
        self.record("customers", gone, "delete")
        self.record_customers(gone, deleted=True)

    def restore_customer(self) -> None:
        """Some days a customer deleted on an earlier day is restored from a backup, as it was:
        its updated_at is older than the deletion (unless a new customer took its id meanwhile)."""
        if self.rng.random() >= 0.4:
            return
        taken = set(self.ids(sa.select(customers.c.customer_id)))
        candidates = sorted(cid for cid in self.deleted_before if cid not in taken)
        if not candidates:
            return
        cid = self.rng.choice(candidates)
        self.con.execute(customers.insert(), [self.deleted_before[cid]])
        self.record("customers", [cid], "restore")
        self.record_customers([cid])

    def change_prices(self) -> None:
        # One price batch a day: all its rows share one updated_at, a tie at the watermark.
        batch_at = self.start + timedelta(hours=6)
        ids = self.rng.sample(self.ids(sa.select(products.c.product_id).order_by("product_id")), 5 * self.scale)
        for pid in ids:
            factor = Decimal(self.rng.choice(("0.90", "0.95", "1.05", "1.10")))
            self.con.execute(
                products.update()
                .where(products.c.product_id == pid)
                .values(unit_price=sa.func.round(products.c.unit_price * factor, 2), updated_at=batch_at)
            )
        self.record("products", ids, "update")
        if self.rng.random() < 0.34:
            row = _new_product(self.rng, self.next_id(products), batch_at)
            self.con.execute(products.insert(), [row])
            self.record("products", [row["product_id"]], "insert")
            stock = _new_stock(self.rng, row)
            self.con.execute(stock_levels.insert(), stock)
            self.record("stock_levels", (key_of("stock_levels", r) for r in stock), "insert")

    def new_orders(self) -> None:
        buyers = [c for c in self.valid_customer_ids() if c % 5 != 0]
        countries: dict[int, str] = {
            row.customer_id: row.country
            for row in self.con.execute(
                sa.select(customers.c.customer_id, sa.func.upper(customers.c.country_code).label("country"))
            )
        }
        catalog = [dict(r) for r in self.con.execute(sa.select(products).order_by("product_id")).mappings()]
        first_order, first_item = self.next_id(orders), self.next_id(order_items)
        order_rows: list[dict[str, Any]] = []
        item_rows: list[dict[str, Any]] = []
        for i in range(60 * self.scale):
            buyer = self.rng.choice(buyers)
            currency = ORDER_CURRENCIES[countries[buyer]]
            order = _new_order(first_order + i, buyer, self.at(), currency, self.rng.choice(CHANNELS))
            order_rows.append(order)
            item_rows.extend(_new_items(self.rng, first_item + len(item_rows), order, catalog))
        for item in self.rng.sample(item_rows, self.rng.randint(1, 2) * self.scale):  # bad rows from a buggy client
            item["quantity"] = self.rng.choice((0, -1))
            self.log.invalid.append(("order_items", item["order_item_id"], "non_positive_quantity"))
        self.con.execute(orders.insert(), order_rows)
        self.con.execute(order_items.insert(), item_rows)
        self.record("orders", (o["order_id"] for o in order_rows), "insert")
        self.record("order_items", (i["order_item_id"] for i in item_rows), "insert")

    def advance_orders(self) -> None:
        moves = (
            ("placed", "shipped", timedelta(days=1), 1.0),
            ("shipped", "delivered", timedelta(days=3), 1.0),
            ("placed", "cancelled", timedelta(0), 0.03),
        )
        changed: list[int] = []
        for old, new, age, share in moves:
            ids = self.ids(
                sa.select(orders.c.order_id)
                .where(orders.c.status == old, orders.c.ordered_at < self.start - age)
                .order_by("order_id")
            )
            ids = [i for i in ids if i not in changed]
            picked = ids if share >= 1 else [i for i in ids if self.rng.random() < share]
            if picked:
                self.con.execute(
                    orders.update().where(orders.c.order_id.in_(picked)).values(status=new, updated_at=self.at())
                )
            changed.extend(picked)
        self.record("orders", changed, "update")

    def delete_orders(self) -> None:
        cancelled = self.ids(sa.select(orders.c.order_id).where(orders.c.status == "cancelled").order_by("order_id"))
        gone = self.rng.sample(cancelled, min(len(cancelled), self.rng.randint(1, 2) * self.scale))
        items = self.ids(sa.select(order_items.c.order_item_id).where(order_items.c.order_id.in_(gone)))
        self.con.execute(order_items.delete().where(order_items.c.order_id.in_(gone)))
        self.con.execute(orders.delete().where(orders.c.order_id.in_(gone)))
        self.record("orders", gone, "delete")
        self.record("order_items", items, "delete")

    def remove_items(self) -> None:
        # A customer drops one line from an open order: the item is deleted, the order is touched.
        candidates = self.ids(
            sa.select(order_items.c.order_id)
            .join(orders, orders.c.order_id == order_items.c.order_id)
            .where(orders.c.status == "placed", order_items.c.quantity > 0)
            .group_by(order_items.c.order_id)
            .having(sa.func.count() > 1)
            .order_by(order_items.c.order_id)
        )
        if not candidates:
            return
        oid = self.rng.choice(candidates)
        item = self.ids(
            sa.select(order_items.c.order_item_id)
            .where(order_items.c.order_id == oid)
            .order_by(order_items.c.order_item_id.desc())
        )[0]
        self.con.execute(order_items.delete().where(order_items.c.order_item_id == item))
        self.con.execute(orders.update().where(orders.c.order_id == oid).values(updated_at=self.at()))
        self.record("order_items", [item], "delete")
        self.record("orders", [oid], "update")

    def move_stock(self) -> None:
        """Stock counts change (one warehouse's counts in a batch sharing one updated_at); some days
        a warehouse starts stocking a product, stops stocking one (the line is deleted), or a line
        deleted earlier is restored from a backup as it was (its updated_at older than its
        deletion); now and then a miscount goes negative (invalid)."""
        lines = [
            (int(r.product_id), str(r.warehouse_code))
            for r in self.con.execute(
                sa.select(stock_levels.c.product_id, stock_levels.c.warehouse_code).order_by(
                    "product_id", "warehouse_code"
                )
            )
        ]
        batch_at = self.start + timedelta(hours=20)
        changed = self.rng.sample(lines, min(len(lines), 12 * self.scale))
        for pid, wh in changed:
            counted = self.rng.randint(0, 400)
            if self.rng.random() < 0.05:
                counted = -self.rng.randint(1, 5)
                self.log.invalid.append(("stock_levels", f"{pid}|{wh}", "negative_stock"))
            at = batch_at if wh == "AMS" else self.at()
            self.con.execute(
                stock_levels.update()
                .where(stock_levels.c.product_id == pid, stock_levels.c.warehouse_code == wh)
                .values(quantity_on_hand=counted, updated_at=at)
            )
        self.record("stock_levels", (f"{p}|{w}" for p, w in changed), "update")
        held = set(lines)
        if self.rng.random() < 0.5:
            pids = self.ids(sa.select(products.c.product_id).order_by("product_id"))
            free = [(p, w) for p in pids for w in WAREHOUSES if (p, w) not in held]
            if free:
                pid, wh = self.rng.choice(free)
                row = {
                    "product_id": pid,
                    "warehouse_code": wh,
                    "quantity_on_hand": self.rng.randint(1, 50),
                    "updated_at": self.at(),
                }
                self.con.execute(stock_levels.insert(), [row])
                self.record("stock_levels", [f"{pid}|{wh}"], "insert")
                held.add((pid, wh))
        if self.rng.random() < 0.6:
            untouched = sorted(held - set(changed))
            pid, wh = self.rng.choice(untouched)
            gone = stock_levels.c.product_id == pid, stock_levels.c.warehouse_code == wh
            line = self.con.execute(sa.select(stock_levels).where(*gone)).mappings().one()
            self.log.deleted_stock.append(dict(line))
            self.con.execute(stock_levels.delete().where(*gone))
            self.record("stock_levels", [f"{pid}|{wh}"], "delete")
            held.discard((pid, wh))
        if self.rng.random() < 0.4:
            back = sorted(k for k in self.deleted_stock_before if tuple(_split_key(k)) not in held)
            if back:
                key = self.rng.choice(back)
                self.con.execute(stock_levels.insert(), [self.deleted_stock_before[key]])
                self.record("stock_levels", [key], "restore")


def _split_key(key: str) -> tuple[int, str]:
    pid, wh = key.split("|")
    return int(pid), wh


def _new_stock(rng: random.Random, product: Any) -> list[dict[str, Any]]:
    """A new product's stock lines: one to three warehouses, counted when it was listed."""
    return [
        {
            "product_id": product["product_id"],
            "warehouse_code": wh,
            "quantity_on_hand": rng.randint(0, 500),
            "updated_at": product["created_at"],
        }
        for wh in sorted(rng.sample(WAREHOUSES, rng.randint(1, 3)))
    ]


def _new_customer(rng: random.Random, cid: int, at: datetime) -> dict[str, Any]:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    country = rng.choice(sorted(COUNTRIES))
    email = f"{first}.{last.replace(' ', '')}{cid}@example.com"
    return {
        "customer_id": cid,
        # Messy on purpose, as real sign-up forms deliver it: staging trims and normalises.
        "first_name": f" {first}" if cid % 7 == 0 else first,
        "last_name": last,
        "email": email.upper() if cid % 3 == 0 else email,
        "phone": _messy_phone(rng, country) if cid % 6 else None,
        "country_code": country.lower() if cid % 4 == 0 else country,
        "city": rng.choice(COUNTRIES[country]),
        "tier": "bronze",
        "created_at": at,
        "updated_at": at,
    }


def _new_product(rng: random.Random, pid: int, at: datetime) -> dict[str, Any]:
    category = rng.choice(CATEGORIES)
    return {
        "product_id": pid,
        "sku": f"SKU-{pid:05d}",
        "product_name": f"{category.title()} item {pid}",
        "category": category,
        "unit_price": Decimal(rng.randrange(299, 19999)) / 100,
        "currency_code": CURRENCY,
        "created_at": at,
        "updated_at": at,
    }


def _messy_phone(rng: random.Random, country: str) -> str:
    """A phone number as people type it: international, 00-prefixed or national (with the trunk
    prefix), with assorted separators. Staging turns every form into the same E.164 number."""
    code = PHONE_CODES[country]
    trunk = "1" if country == "US" else "0"
    area = str(rng.randrange(201, 989) if country == "US" else rng.randrange(20, 99))
    line = str(rng.randrange(1_000_000, 9_999_999))
    return rng.choice(
        (
            f"+{code} {area} {line}",
            f"00{code}-{area}-{line}",
            f"{trunk} ({area}) {line[:3]} {line[3:]}",
            f"{trunk}{area}/{line}",
        )
    )


def _new_order(
    oid: int, customer_id: int, at: datetime, currency: str = CURRENCY, channel: str | None = None
) -> dict[str, Any]:
    return {
        "order_id": oid,
        "customer_id": customer_id,
        "status": "placed",
        "currency_code": currency,
        "channel": channel,
        "ordered_at": at,
        "updated_at": at,
    }


def _new_items(
    rng: random.Random, first_id: int, order: dict[str, Any], catalog: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    picked = rng.sample(catalog, rng.randint(1, 4))
    rate = DEMO_RATES[order["currency_code"]]
    return [
        {
            "order_item_id": first_id + i,
            "order_id": order["order_id"],
            "product_id": p["product_id"],
            "quantity": rng.randint(1, 3),
            "unit_price": (Decimal(p["unit_price"]) * rate).quantize(Decimal("0.01")),
            "updated_at": order["ordered_at"],
        }
        for i, p in enumerate(picked)
    ]


def _to_json(row: dict[str, Any]) -> str:
    return json.dumps({k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()})


def _from_json(text: str) -> dict[str, Any]:
    row = json.loads(text)
    return {k: datetime.fromisoformat(v) if k in ("created_at", "updated_at") else v for k, v in row.items()}


def _version(row: dict[str, Any], deleted: bool) -> dict[str, Any]:
    keys = ("customer_id", "first_name", "last_name", "email", "country_code", "city", "tier")
    return {
        **{k: row[k] for k in keys},
        "updated_at": row["updated_at"].isoformat(sep=" "),
        "is_deleted": int(deleted),
    }
