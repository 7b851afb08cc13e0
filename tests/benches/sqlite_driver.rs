//! What the daemon's store costs a database operation on SQLite, next to SQLite driven by hand,
//! on the daemon's own database (its migrations, `Db`'s read connections and group-committing
//! writer). It decided the store's SQLite driver (sqlx's worker threads, then rusqlite in
//! place) and keeps the store's overhead over the bare driver in view.
//!
//! * reads: a point read of the registry (`user_uris` by URI, as the call path's `hosts` port
//!   does) from CALLERS concurrent tasks: `Db::user_id_for_uri` against the same statement run
//!   by rusqlite on the task's own thread, from a pool of read-only connections;
//! * writes: units of STATEMENTS inserts each from CALLERS concurrent tasks: `Db::begin_write`
//!   (a savepoint in the writer's group, its statements run in place) against a writer thread
//!   of rusqlite that takes each unit as one message and commits every unit waiting as one
//!   group.
//!
//! Both sides keep the daemon's settings (WAL, `synchronous=FULL`: a commit is an fsync), so
//! the write figures include the same group fsyncs. Reported per operation: wall time, CPU of
//! the whole process, and voluntary context switches of all its threads.
//!
//! `cargo bench -p switchyard-tests --bench sqlite_driver [-- OPERATIONS CALLERS STATEMENTS]`

use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use switchyard_provider::db::records::NewUser;
use switchyard_provider::db::registry::insert_users;
use switchyard_provider::db::sql::query;
use switchyard_provider::db::Db;
use tokio::sync::oneshot;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USERS: usize = 10_000;

/// `Db::user_id_for_uri`'s statement, the same text: SQLite reads `$1` as a parameter named
/// `$1`, so the SQL written for both databases can be bound by name here.
const USER_FOR_URI: &str = "SELECT user_id FROM user_uris WHERE uri = $1";

/// CPU seconds of the process (user + system) and its threads' voluntary context switches.
fn process_counters() -> (f64, u64) {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("/proc/self/stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat[stat.rfind(')').expect("stat format") + 2..]
        .split(' ')
        .collect();
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    let mut switches = 0;
    for task in std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .flatten()
    {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        switches += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    // USER_HZ is 100 on Linux.
    (ticks / 100.0, switches)
}

struct Measured {
    start: Instant,
    cpu: f64,
    switches: u64,
}

impl Measured {
    fn start() -> Measured {
        let (cpu, switches) = process_counters();
        Measured {
            start: Instant::now(),
            cpu,
            switches,
        }
    }

    fn report(self, label: &str, operations: usize) {
        let wall = self.start.elapsed().as_secs_f64();
        let (cpu, switches) = process_counters();
        let n = operations as f64;
        println!(
            "{label:<44} {:>9.0}/s  wall {:>7.1} µs  CPU {:>7.1} µs  switches {:>5.1}  (per operation)",
            n / wall,
            wall / n * 1e6,
            (cpu - self.cpu) / n * 1e6,
            switches.saturating_sub(self.switches) as f64 / n,
        );
    }
}

/// Runs `work(caller)` in `callers` concurrent tasks and reports them together as `operations`.
async fn measure<F, Fut>(
    label: &str,
    operations: usize,
    callers: usize,
    work: F,
) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let measured = Measured::start();
    let tasks: Vec<_> = (0..callers)
        .map(|caller| tokio::spawn(work(caller)))
        .collect();
    for task in tasks {
        task.await?;
    }
    measured.report(label, operations);
    Ok(())
}

/// A rusqlite connection per caller at most, each used on the caller's own thread.
struct Readers {
    path: std::path::PathBuf,
    idle: Mutex<Vec<rusqlite::Connection>>,
}

impl Readers {
    fn user_id_for_uri(&self, uri: &str) -> rusqlite::Result<Option<String>> {
        let conn = self.idle.lock().expect("readers lock").pop();
        let conn = match conn {
            Some(conn) => conn,
            None => {
                let conn = rusqlite::Connection::open_with_flags(
                    &self.path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                conn.busy_timeout(std::time::Duration::from_secs(10))?;
                conn
            }
        };
        let answer = conn
            .prepare_cached(USER_FOR_URI)?
            .query_row(rusqlite::named_params! {"$1": uri}, |row| row.get(0))
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            });
        self.idle.lock().expect("readers lock").push(conn);
        answer
    }
}

type UnitMessage = (Vec<String>, oneshot::Sender<Result<(), String>>);

/// A writer thread: each unit arrives as one message; every unit waiting when a group starts
/// goes into it, each in a savepoint, and the group ends with one commit.
fn start_writer(path: &std::path::Path) -> rusqlite::Result<mpsc::Sender<UnitMessage>> {
    let conn = rusqlite::Connection::open(path)?;
    conn.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=10000;",
    )?;
    let (tx, rx) = mpsc::channel::<UnitMessage>();
    let inserts = |conn: &rusqlite::Connection, rows: &[String]| -> rusqlite::Result<()> {
        let mut insert = conn.prepare_cached("INSERT INTO bench_rows (value) VALUES ($1)")?;
        for row in rows {
            insert.execute(rusqlite::named_params! {"$1": row})?;
        }
        Ok(())
    };
    // A unit that fails is undone alone; the group's other units keep their writes.
    let run = move |conn: &rusqlite::Connection, rows: &[String]| -> rusqlite::Result<()> {
        conn.execute_batch("SAVEPOINT unit")?;
        match inserts(conn, rows) {
            Ok(()) => conn.execute_batch("RELEASE unit"),
            Err(e) => {
                conn.execute_batch("ROLLBACK TO unit; RELEASE unit")?;
                Err(e)
            }
        }
    };
    std::thread::spawn(move || {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            group.extend(rx.try_iter().take(255));
            let outcome = conn.execute_batch("BEGIN IMMEDIATE").and_then(|()| {
                let results: Vec<rusqlite::Result<()>> =
                    group.iter().map(|(rows, _)| run(&conn, rows)).collect();
                conn.execute_batch("COMMIT").map(|()| results)
            });
            match outcome {
                Ok(results) => {
                    for ((_, reply), result) in group.into_iter().zip(results) {
                        let _ = reply.send(result.map_err(|e| e.to_string()));
                    }
                }
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    for (_, reply) in group {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
        }
    });
    Ok(tx)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = switchyard_tests::bench_arguments();
    let operations: usize = args
        .first()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(40_000);
    let callers: usize = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(8);
    let statements: usize = args.get(2).map(|a| a.parse()).transpose()?.unwrap_or(5);
    anyhow::ensure!(
        callers > 0 && statements > 0 && operations >= 10 * callers,
        "need at least one caller and one statement a unit, and 10 operations a caller"
    );
    let per_caller = operations / callers;
    let operations = per_caller * callers;

    let dir = tempfile::tempdir()?;
    let path = dir.path().join("switchyard.db");
    let db = Db::connect(&format!("sqlite:{}", path.display()), 8).await?;
    let ids: Vec<String> = (0..USERS)
        .map(|_| switchyard_provider::registry::new_user_id())
        .collect();
    let uris: Vec<Vec<String>> = (0..USERS)
        .map(|i| vec![format!("tel:+1650{i:07}")])
        .collect();
    let users: Vec<NewUser> = (0..USERS)
        .map(|i| NewUser {
            id: &ids[i],
            display_name: "User",
            uris: &uris[i],
            created_at: 0,
        })
        .collect();
    let mut tx = db.begin_write().await?;
    insert_users(&mut tx, &users).await?;
    query("CREATE TABLE bench_rows (id INTEGER PRIMARY KEY, value TEXT NOT NULL)")
        .execute(&mut tx)
        .await?;
    tx.commit().await?;
    let uris = Arc::new(uris);
    println!(
        "{operations} operations from {callers} concurrent callers; write units of {statements} inserts"
    );

    // Reads through the daemon's store.
    measure(
        "read, the store (Db::user_id_for_uri)",
        operations,
        callers,
        |caller| {
            let (db, uris) = (db.clone(), uris.clone());
            async move {
                for i in 0..per_caller {
                    let uri = &uris[(caller * per_caller + i) % USERS][0];
                    assert!(db.user_id_for_uri(uri).await.expect("read").is_some());
                    // On SQLite the read runs in place and never waits, so the loop yields as
                    // the rusqlite one below does.
                    tokio::task::yield_now().await;
                }
            }
        },
    )
    .await?;

    // The same reads by rusqlite on each task's thread.
    let readers = Arc::new(Readers {
        path: path.clone(),
        idle: Mutex::new(Vec::new()),
    });
    measure(
        "read, rusqlite on the caller's thread",
        operations,
        callers,
        |caller| {
            let (readers, uris) = (readers.clone(), uris.clone());
            async move {
                for i in 0..per_caller {
                    let uri = &uris[(caller * per_caller + i) % USERS][0];
                    assert!(readers.user_id_for_uri(uri).expect("read").is_some());
                    // A task of the daemon yields between requests; so does this one.
                    tokio::task::yield_now().await;
                }
            }
        },
    )
    .await?;

    // Write units through the daemon's writer.
    let units_per_caller = operations / 10 / callers;
    let units = units_per_caller * callers;
    measure(
        "write unit, the store (Db::begin_write)",
        units,
        callers,
        |caller| {
            let db = db.clone();
            async move {
                for i in 0..units_per_caller {
                    let mut tx = db.begin_write().await.expect("unit");
                    for s in 0..statements {
                        query("INSERT INTO bench_rows (value) VALUES ($1)")
                            .bind(format!("store {caller} {i} {s}"))
                            .execute(&mut tx)
                            .await
                            .expect("insert");
                    }
                    tx.commit().await.expect("commit");
                }
            }
        },
    )
    .await?;

    // The same units, each one message to a rusqlite writer thread.
    let writer = start_writer(&path)?;
    measure(
        "write unit, rusqlite writer thread",
        units,
        callers,
        |caller| {
            let writer = writer.clone();
            async move {
                for i in 0..units_per_caller {
                    let rows = (0..statements)
                        .map(|s| format!("rusqlite {caller} {i} {s}"))
                        .collect();
                    let (reply, done) = oneshot::channel();
                    writer.send((rows, reply)).expect("writer thread");
                    done.await.expect("writer answers").expect("unit");
                }
            }
        },
    )
    .await?;
    // Closed only now: a thread that ends takes its context switches out of the count.
    db.close().await;
    Ok(())
}
