//! `authd replay rebuild [--swap]`: fold the whole log into fresh read-model tables,
//! compare them row by row with the live ones, and on request replace the live ones.
//!
//! The fresh tables are temporary tables with the live tables' names and shape, on
//! one connection: both stores look a table name up in the temporary schema first,
//! so the projections' own fold (`ReadModels::fold_on`) writes into them unchanged.
//! On PostgreSQL the fold and the comparison read one snapshot (repeatable read); on
//! SQLite one read transaction. The live read models first fold what the log holds
//! (the server folds off the request path, so they may lag by a moment); a live read
//! model still behind the log then shows as a difference. `--swap` replaces the live rows in one
//! transaction, together with `projection_versions`, then catches up on events
//! committed since the snapshot.

use crate::store::shred::Kek;
use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{bail, Context};
use projections::{with_conn, Conn, Db, ReadModels};

use crate::store::log::{self, Backend, Event, LogError};

use crate::config::RebuildArgs;

/// The read models and the columns that identify one of their rows. Adding a read
/// model to the comparison is one line here.
const READ_MODELS: &[(&str, &[&str])] = &[
    ("users_view", &["profile_id"]),
    ("sessions_view", &["session_id"]),
    ("invite_tokens_view", &["token_id"]),
    ("mfa_view", &["profile_id"]),
    ("verifiers_view", &["verification_id"]),
    ("projection_versions", &["aggregate_type", "aggregate_id"]),
];

const PAGE: i64 = 1000;

/// One row that differs between the live and the rebuilt table.
#[derive(Debug)]
enum Difference {
    /// In the live table only.
    Extra { key: String, row: String },
    /// In the rebuilt table only.
    Missing { key: String, row: String },
    /// In both, with other values: (column, live, rebuilt).
    Changed { key: String, columns: Vec<(String, String, String)> },
}

pub async fn run(db: &Db, kek: &Kek, args: &RebuildArgs) -> anyhow::Result<ExitCode> {
    crate::store::Store::new(db.clone(), kek.clone()).catch_up().await.context("catch-up of the live read models failed")?;
    let bar = super::progress(db, "", &[], "rebuilding").await?;
    // A connection of its own, closed at the end: its temporary tables shadow the
    // live ones and must never go back to a pool.
    let report = match db {
        Db::Postgres(pool) => {
            let mut conn = pool.acquire().await?.detach();
            rebuild(&mut Conn::Postgres(&mut conn), kek, args, &bar).await?
        }
        Db::Sqlite(pool) => {
            let mut conn = pool.acquire().await?.detach();
            rebuild(&mut Conn::Sqlite(&mut conn), kek, args, &bar).await?
        }
    };
    bar.finish_and_clear();
    let differences: usize = report.tables.values().map(Vec::len).sum();
    println!("rebuilt {} read models from {} events", READ_MODELS.len(), report.events);
    for (table, rows) in &report.tables {
        if rows.is_empty() {
            println!("{table}: same");
            continue;
        }
        println!("{table}: {} rows differ", rows.len());
        for difference in rows {
            match difference {
                Difference::Extra { key, row } => println!("  {key}: only in the live table: {row}"),
                Difference::Missing { key, row } => println!("  {key}: missing from the live table: {row}"),
                Difference::Changed { key, columns } => {
                    for (column, live, rebuilt) in columns {
                        println!("  {key}: {column}: live {live}, rebuilt {rebuilt}");
                    }
                }
            }
        }
    }
    if differences == 0 {
        println!("no differences: the live read models match the log");
    } else {
        println!("{differences} differences");
    }
    if args.swap {
        let caught_up = crate::store::Store::new(db.clone(), kek.clone()).catch_up().await.context("catch-up after the swap failed")?;
        println!("swapped: the live read models are the rebuilt ones (then caught up {caught_up} newer events)");
        return Ok(ExitCode::SUCCESS);
    }
    Ok(if differences == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

struct Report {
    events: u64,
    tables: BTreeMap<&'static str, Vec<Difference>>,
}

async fn execute(conn: &mut Conn<'_>, sql: &str) -> anyhow::Result<()> {
    with_conn!(conn, c => sqlx::query(sql).execute(&mut **c).await.map(|_| ()))
        .with_context(|| format!("rebuild: {}", sql.split_whitespace().collect::<Vec<_>>().join(" ")))?;
    Ok(())
}

async fn rebuild(conn: &mut Conn<'_>, kek: &Kek, args: &RebuildArgs, bar: &indicatif::ProgressBar) -> anyhow::Result<Report> {
    let postgres = matches!(conn, Conn::Postgres(_));
    // Where the live tables are, and where the rebuilt ones go.
    let live_schema = if postgres {
        let schema: String = with_conn!(conn, c => sqlx::query_scalar("SELECT current_schema()").fetch_one(&mut **c).await)?;
        format!("\"{}\"", schema.replace('"', "\"\""))
    } else {
        "main".to_string()
    };
    let temp_schema = if postgres { "pg_temp" } else { "temp" };

    execute(conn, if postgres { "BEGIN ISOLATION LEVEL REPEATABLE READ" } else { "BEGIN" }).await?;
    for (table, _) in READ_MODELS {
        create_like(conn, postgres, &live_schema, table).await?;
    }
    let events = fold_log(conn, kek, bar).await?;
    let mut tables = BTreeMap::new();
    for (table, keys) in READ_MODELS {
        let live = format!("{live_schema}.{table}");
        let rebuilt = format!("{temp_schema}.{table}");
        tables.insert(*table, compare(conn, postgres, &live_schema, table, keys, &live, &rebuilt).await?);
    }
    execute(conn, "COMMIT").await?;

    if args.swap {
        execute(conn, if postgres { "BEGIN" } else { "BEGIN IMMEDIATE" }).await?;
        if postgres {
            // Live folds wait until the swap is done.
            let all = READ_MODELS.iter().map(|(table, _)| format!("{live_schema}.{table}")).collect::<Vec<_>>();
            execute(conn, &format!("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE", all.join(", "))).await?;
        }
        for (table, _) in READ_MODELS {
            execute(conn, &format!("DELETE FROM {live_schema}.{table}")).await?;
            execute(conn, &format!("INSERT INTO {live_schema}.{table} SELECT * FROM {temp_schema}.{table}")).await?;
        }
        execute(conn, "COMMIT").await?;
    }
    for (table, _) in READ_MODELS {
        execute(conn, &format!("DROP TABLE {temp_schema}.{table}")).await?;
    }
    Ok(Report { events, tables })
}

/// An empty temporary table shaped like the live `table` (keys included, which the
/// fold's `ON CONFLICT` needs).
async fn create_like(conn: &mut Conn<'_>, postgres: bool, live_schema: &str, table: &str) -> anyhow::Result<()> {
    if postgres {
        return execute(conn, &format!("CREATE TEMP TABLE {table} (LIKE {live_schema}.{table} INCLUDING ALL)")).await;
    }
    let ddl: Option<String> = with_conn!(conn, c => {
        sqlx::query_scalar("SELECT sql FROM main.sqlite_master WHERE type = 'table' AND name = $1")
            .bind(table)
            .fetch_optional(&mut **c)
            .await
    })?;
    let Some(ddl) = ddl else { bail!("read model table {table} does not exist") };
    let Some(rest) = ddl.strip_prefix("CREATE TABLE") else { bail!("unexpected definition of {table}: {ddl}") };
    execute(conn, &format!("CREATE TEMP TABLE{rest}")).await
}

/// Folds every event, per aggregate in sequence order, into the (shadowing) tables.
async fn fold_log(conn: &mut Conn<'_>, kek: &Kek, bar: &indicatif::ProgressBar) -> anyhow::Result<u64> {
    let sql = format!(
        "SELECT {} FROM events e WHERE (e.aggregate_type, e.aggregate_id, e.sequence) > ($1, $2, $3)
         ORDER BY e.aggregate_type, e.aggregate_id, e.sequence LIMIT $4",
        log::columns(Backend::of_conn(conn))
    );
    let mut after = (String::new(), String::new(), 0i64);
    let mut total = 0u64;
    // The read models fold clear (or erased) values, as the live ones do (src/store/shred.rs).
    let ring = crate::store::shred::KeyRing::load_all_on(conn, kek).await.context("cannot read the subject keys")?;
    loop {
        let page: Vec<Event> = with_conn!(conn, c => {
            let rows = sqlx::query(&sql).bind(&after.0).bind(&after.1).bind(after.2).bind(PAGE).fetch_all(&mut **c).await?;
            rows.iter().map(Event::from_row).collect::<Result<Vec<_>, LogError>>()
        })
        .context("cannot read the log")?;
        let Some(last) = page.last() else { return Ok(total) };
        after = (last.aggregate_type.clone(), last.aggregate_id.clone(), last.sequence);
        for mut event in page {
            ring.reveal(&mut event.payload);
            ReadModels::fold_on(conn, &event).await?;
            total += 1;
            bar.inc(1);
        }
    }
}

/// Column names of the live `table`, in order.
async fn column_names(conn: &mut Conn<'_>, postgres: bool, live_schema: &str, table: &str) -> anyhow::Result<Vec<String>> {
    let names: Vec<String> = if postgres {
        let schema = live_schema.trim_matches('"').replace("\"\"", "\"");
        with_conn!(conn, c => {
            sqlx::query_scalar(
                "SELECT CAST(column_name AS TEXT) FROM information_schema.columns
                 WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
            )
            .bind(schema)
            .bind(table)
            .fetch_all(&mut **c)
            .await
        })?
    } else {
        with_conn!(conn, c => {
            sqlx::query_scalar("SELECT name FROM pragma_table_info($1, 'main') ORDER BY cid")
                .bind(table)
                .fetch_all(&mut **c)
                .await
        })?
    };
    if names.is_empty() {
        bail!("read model table {table} does not exist");
    }
    Ok(names)
}

/// Rows of `left` that are not in `right`, every column as text.
async fn except(conn: &mut Conn<'_>, columns: &[String], left: &str, right: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
    let list = columns.iter().map(|column| format!("CAST({column} AS TEXT)")).collect::<Vec<_>>().join(", ");
    let sql = format!("SELECT {list} FROM {left} EXCEPT SELECT {list} FROM {right}");
    let rows = with_conn!(conn, c => {
        use sqlx::Row;
        let rows = sqlx::query(&sql).fetch_all(&mut **c).await?;
        rows.iter()
            .map(|row| (0..columns.len()).map(|index| row.try_get::<Option<String>, _>(index)).collect())
            .collect::<Result<Vec<Vec<Option<String>>>, sqlx::Error>>()
    })
    .with_context(|| format!("cannot compare {left} with {right}"))?;
    Ok(rows)
}

async fn compare(
    conn: &mut Conn<'_>,
    postgres: bool,
    live_schema: &str,
    table: &str,
    keys: &[&str],
    live: &str,
    rebuilt: &str,
) -> anyhow::Result<Vec<Difference>> {
    let columns = column_names(conn, postgres, live_schema, table).await?;
    let key_indexes = keys
        .iter()
        .map(|key| columns.iter().position(|column| column == key).with_context(|| format!("{table} has no column {key}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let text = |value: &Option<String>| value.clone().unwrap_or_else(|| "null".to_string());
    let key_of = |row: &[Option<String>]| {
        key_indexes.iter().map(|&index| format!("{}={}", columns[index], text(&row[index]))).collect::<Vec<_>>().join(",")
    };
    let render = |row: &[Option<String>]| {
        columns.iter().zip(row).map(|(column, value)| format!("{column}={}", text(value))).collect::<Vec<_>>().join(" ")
    };
    let live_only: BTreeMap<String, Vec<Option<String>>> =
        except(conn, &columns, live, rebuilt).await?.into_iter().map(|row| (key_of(&row), row)).collect();
    let mut rebuilt_only: BTreeMap<String, Vec<Option<String>>> =
        except(conn, &columns, rebuilt, live).await?.into_iter().map(|row| (key_of(&row), row)).collect();
    let mut differences = Vec::new();
    for (key, live_row) in live_only {
        match rebuilt_only.remove(&key) {
            Some(rebuilt_row) => {
                let changed = columns
                    .iter()
                    .zip(live_row.iter().zip(&rebuilt_row))
                    .filter(|(_, (live, rebuilt))| live != rebuilt)
                    .map(|(column, (live, rebuilt))| (column.clone(), text(live), text(rebuilt)))
                    .collect();
                differences.push(Difference::Changed { key, columns: changed });
            }
            None => differences.push(Difference::Extra { row: render(&live_row), key }),
        }
    }
    for (key, row) in rebuilt_only {
        differences.push(Difference::Missing { row: render(&row), key });
    }
    Ok(differences)
}
