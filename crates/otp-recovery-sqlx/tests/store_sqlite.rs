//! The SQLite store: the conformance suite on a file and in memory, and
//! what only a persistent store has: restarts, a file shared by several
//! openers, and corrupt data written behind its back.
#![cfg(feature = "sqlite")]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use otp_recovery::record::{FlowRecord, FlowState, Subject};
use otp_recovery::sms::RecordingSender;
use otp_recovery::store::{
    CodeStore, Counter, CounterValue, Created, Load, Newest, Result as StoreResult, StoreError,
};
use otp_recovery::support::{SupportCase, SupportReference};
use otp_recovery::{
    Account, AccountId, Code, Error, FlowId, KeyRing, ManualClock, PhoneNumber, Recovery, RequestContext,
    ServerKey, Timestamp,
};
use otp_recovery_sqlx::sqlite::SqliteStore;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, SqliteConnection};

/// A fresh database file in the temporary directory.
fn temp_db() -> PathBuf {
    let dir = std::env::temp_dir().join("otp-recovery-sqlite-tests");
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir.join(format!("{}.db", FlowId::generate().expect("randomness")))
}

otp_recovery::code_store_conformance! {
    store: async {
        let db = Arc::new(TempDb::new());
        Scratch {
            store: SqliteStore::open(db.path()).await.unwrap(),
            _file: db,
        }
    },
    // Two stores on one file, as two processes of the host would have.
    two_instances: async {
        let db = Arc::new(TempDb::new());
        let open = || async { SqliteStore::open(db.path()).await.unwrap() };
        let (a, b) = (open().await, open().await);
        (
            Scratch { store: a, _file: db.clone() },
            Scratch { store: b, _file: db.clone() },
        )
    },
}

mod in_memory {
    use std::sync::Arc;

    use otp_recovery_sqlx::sqlite::SqliteStore;

    otp_recovery::code_store_conformance! {
        store: async { SqliteStore::open_in_memory().await.unwrap() },
        two_instances: async {
            let shared = Arc::new(SqliteStore::open_in_memory().await.unwrap());
            (shared.clone(), shared)
        },
    }
}

/// A database file deleted, with its WAL and shared-memory files, when the
/// test ends (declare it before the stores, so it is dropped after them).
struct TempDb(PathBuf);

impl TempDb {
    fn new() -> Self {
        TempDb(temp_db())
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// A plain connection to the file, bypassing the store.
    async fn connect(&self) -> SqliteConnection {
        SqliteConnectOptions::new()
            .filename(&self.0)
            .connect()
            .await
            .expect("a direct connection")
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// A store on a file of its own that is deleted when the check is done
/// with it. Every method, the overridden defaults included, goes straight
/// to the `SqliteStore`.
struct Scratch {
    store: SqliteStore,
    /// Dropped after the last store on it.
    _file: Arc<TempDb>,
}

#[async_trait]
impl CodeStore for Scratch {
    async fn create_flow(&self, flow: &FlowRecord, newest: Newest<'_>) -> StoreResult<Created> {
        self.store.create_flow(flow, newest).await
    }
    async fn get_flow(&self, id: &FlowId) -> StoreResult<Option<FlowRecord>> {
        self.store.get_flow(id).await
    }
    async fn load_counting(
        &self,
        load: Load<'_>,
        counters: &[Counter],
        now: Timestamp,
    ) -> StoreResult<(Option<FlowRecord>, Vec<CounterValue>)> {
        self.store.load_counting(load, counters, now).await
    }
    async fn find_flows(&self, subject_key: &str, limit: usize) -> StoreResult<Vec<FlowRecord>> {
        self.store.find_flows(subject_key, limit).await
    }
    async fn put_case(&self, case: &SupportCase) -> StoreResult<()> {
        self.store.put_case(case).await
    }
    async fn get_case(&self, reference: &SupportReference) -> StoreResult<Option<SupportCase>> {
        self.store.get_case(reference).await
    }
    async fn delete_counters(&self, keys: &[String]) -> StoreResult<()> {
        self.store.delete_counters(keys).await
    }
    async fn compare_and_swap(&self, expected_version: u64, flow: &FlowRecord) -> StoreResult<bool> {
        self.store.compare_and_swap(expected_version, flow).await
    }
    async fn compare_and_swap_counting(
        &self,
        expected_version: u64,
        flow: &FlowRecord,
        counters: &[Counter],
        now: Timestamp,
    ) -> StoreResult<Option<Vec<CounterValue>>> {
        self.store
            .compare_and_swap_counting(expected_version, flow, counters, now)
            .await
    }
    async fn increment_counters(
        &self,
        counters: &[Counter],
        now: Timestamp,
    ) -> StoreResult<Vec<CounterValue>> {
        self.store.increment_counters(counters, now).await
    }
    async fn purge_expired(&self, now: Timestamp) -> StoreResult<u64> {
        self.store.purge_expired(now).await
    }
}

const T0: Timestamp = Timestamp::from_unix_millis(1_800_000_000_000);
const HOUR: Duration = Duration::from_secs(3600);

fn key() -> ServerKey {
    ServerKey::from_bytes(vec![7; 32]).unwrap()
}

fn recovery<S: CodeStore>(
    store: S,
    sender: &RecordingSender,
    clock: &ManualClock,
) -> Recovery<S, RecordingSender, ManualClock> {
    Recovery::new(store, sender.clone(), KeyRing::new(1, key())).with_clock(clock.clone())
}

fn account(id: &str) -> Account {
    Account::new(
        AccountId::new(id).unwrap(),
        PhoneNumber::parse("+14155550123").unwrap(),
    )
}

/// A code that is certainly not `code`.
fn wrong(code: &Code) -> String {
    let n: u64 = code.expose_secret().parse().unwrap();
    format!(
        "{:0width$}",
        (n + 1) % 10u64.pow(code.len() as u32),
        width = code.len()
    )
}

async fn request<S: CodeStore>(
    recovery: &Recovery<S, RecordingSender, ManualClock>,
    sender: &RecordingSender,
    who: &str,
) -> (FlowId, Code) {
    let requested = recovery
        .request(
            &format!("{who}@example.com"),
            Some(account(who)),
            &RequestContext::without_client_ip(),
        )
        .await
        .unwrap();
    (requested.flow_id, sender.last_code().unwrap())
}

#[tokio::test]
async fn a_flow_and_its_wrong_attempts_survive_a_restart() {
    let db = TempDb::new();
    let sender = RecordingSender::new();
    let clock = ManualClock::new(T0);
    let ctx = RequestContext::without_client_ip();

    let before = recovery(SqliteStore::open(db.path()).await.unwrap(), &sender, &clock);
    let (flow, code) = request(&before, &sender, "alice").await;
    let err = before.verify(&flow, &wrong(&code), &ctx).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidCode { attempts_left: 4, .. }),
        "{err:?}"
    );
    drop(before);

    clock.advance(Duration::from_secs(60));
    let after = recovery(SqliteStore::open(db.path()).await.unwrap(), &sender, &clock);
    let err = after.verify(&flow, &wrong(&code), &ctx).await.unwrap_err();
    assert!(
        matches!(err, Error::InvalidCode { attempts_left: 3, .. }),
        "the wrong code counted before the restart must still count: {err:?}"
    );
    let verified = after.verify(&flow, code.expose_secret(), &ctx).await.unwrap();
    let done = after.reset(&verified.token.expose_secret(), &ctx).await.unwrap();
    assert_eq!(done.account.as_str(), "alice");
    let stored = after.store().get_flow(&flow).await.unwrap().unwrap();
    assert_eq!(stored.state, FlowState::Completed);
    assert_eq!(stored.failed_attempts, 2);
    after.store().close().await;
}

#[tokio::test]
async fn corrupt_records_are_decode_errors_not_panics() {
    let db = TempDb::new();
    let store = Arc::new(SqliteStore::open(db.path()).await.unwrap());
    let sender = RecordingSender::new();
    let recovery = recovery(store.clone(), &sender, &ManualClock::new(T0));
    let (alice, code) = request(&recovery, &sender, "alice").await;
    let (bob, _) = request(&recovery, &sender, "bob").await;
    let mut conn = db.connect().await;

    sqlx::query("UPDATE flows SET data = ? WHERE id = ?")
        .bind(b"\x00not a record".as_slice())
        .bind(alice.as_bytes().as_slice())
        .execute(&mut conn)
        .await
        .unwrap();
    let err = store.get_flow(&alice).await.unwrap_err();
    assert!(matches!(err, StoreError::Decode(_)), "{err:?}");
    let err = recovery
        .verify(&alice, code.expose_secret(), &RequestContext::without_client_ip())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Store(StoreError::Decode(_))), "{err:?}");
    let alices = Subject::Account(AccountId::new("alice").unwrap()).key();
    assert!(matches!(
        store.find_flows(&alices, 10).await,
        Err(StoreError::Decode(_))
    ));

    // A valid record under another flow's id is refused as well.
    sqlx::query("UPDATE flows SET data = (SELECT data FROM flows WHERE id = ?) WHERE id = ?")
        .bind(bob.as_bytes().as_slice())
        .bind(alice.as_bytes().as_slice())
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(matches!(store.get_flow(&alice).await, Err(StoreError::Decode(_))));
    assert!(
        store.get_flow(&bob).await.unwrap().is_some(),
        "other flows stay readable"
    );

    // Support cases and counters too.
    let reference = SupportReference::parse("ABCD-1234").unwrap();
    sqlx::query("INSERT INTO cases (reference, purge_after, data) VALUES (?, ?, ?)")
        .bind(reference.as_compact())
        .bind(i64::MAX)
        .bind(vec![0xffu8; 40])
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(matches!(
        store.get_case(&reference).await,
        Err(StoreError::Decode(_))
    ));
    sqlx::query("INSERT INTO counters (key, count, resets_at) VALUES ('bad', -3, ?)")
        .bind(i64::MAX)
        .execute(&mut conn)
        .await
        .unwrap();
    let err = store
        .increment_counters(&[Counter::new("bad", HOUR, 1)], T0)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Decode(_)), "{err:?}");
    assert!(
        !err.to_string().contains("-3"),
        "messages never carry stored values: {err}"
    );
    conn.close().await.unwrap();
    store.close().await;
}

#[tokio::test]
async fn opening_a_file_again_keeps_its_schema_and_data() {
    let db = TempDb::new();
    let first = SqliteStore::open(db.path()).await.unwrap();
    let second = SqliteStore::open(db.path())
        .await
        .expect("the schema is created idempotently");
    let counter = |by| [Counter::new("shared", HOUR, by)];
    first.increment_counters(&counter(2), T0).await.unwrap();
    let values = second.increment_counters(&counter(1), T0).await.unwrap();
    assert_eq!(
        values,
        [CounterValue::new(3, Some(T0.saturating_add(HOUR)))],
        "two openers share one database"
    );
    first.close().await;
    second.close().await;

    let third = SqliteStore::open(db.path()).await.unwrap();
    let values = third
        .increment_counters(&[Counter::read("shared", HOUR)], T0)
        .await
        .unwrap();
    assert_eq!(values[0].count, 3);
    third.close().await;

    let mut conn = db.connect().await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let version: i64 = sqlx::query_scalar("PRAGMA user_version")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(version, 1);
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_newer_schema_or_a_foreign_file_is_refused() {
    let db = TempDb::new();
    SqliteStore::open(db.path()).await.unwrap().close().await;
    let mut conn = db.connect().await;
    sqlx::raw_sql("PRAGMA user_version = 2")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let err = SqliteStore::open(db.path()).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Backend { retryable: false, .. }),
        "{err:?}"
    );

    let foreign = TempDb::new();
    std::fs::write(foreign.path(), [0x42u8; 4096]).unwrap();
    let err = SqliteStore::open(foreign.path()).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Backend { retryable: false, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_write_locked_by_another_process_fails_retryably_and_reads_go_on() {
    let db = TempDb::new();
    let store = SqliteStore::open(db.path()).await.unwrap();
    store
        .increment_counters(&[Counter::new("k", HOUR, 1)], T0)
        .await
        .unwrap();
    let mut other = db.connect().await;
    sqlx::raw_sql("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();

    let err = store
        .increment_counters(&[Counter::new("k", HOUR, 1)], T0)
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "a busy database is worth retrying: {err:?}");
    let read = store
        .increment_counters(&[Counter::read("k", HOUR)], T0)
        .await
        .unwrap();
    assert_eq!(
        read[0].count, 1,
        "readers are not blocked, and the failed write left nothing"
    );

    sqlx::raw_sql("ROLLBACK").execute(&mut other).await.unwrap();
    other.close().await.unwrap();
    let values = store
        .increment_counters(&[Counter::new("k", HOUR, 1)], T0)
        .await
        .unwrap();
    assert_eq!(values[0].count, 2);
    store.close().await;
}

#[tokio::test]
async fn in_memory_stores_are_separate_and_debug_shows_no_contents() {
    let a = SqliteStore::open_in_memory().await.unwrap();
    let b = SqliteStore::open_in_memory().await.unwrap();
    let sender = RecordingSender::new();
    let recovery = recovery(a, &sender, &ManualClock::new(T0));
    let (flow, _) = request(&recovery, &sender, "alice").await;
    assert!(recovery.store().get_flow(&flow).await.unwrap().is_some());
    assert_eq!(b.get_flow(&flow).await.unwrap(), None);
    let debug = format!("{:?}", recovery.store());
    assert!(
        debug.contains("SqliteStore") && debug.contains(":memory:"),
        "{debug}"
    );
    assert!(!debug.contains("alice"), "{debug}");

    let db = TempDb::new();
    let file = SqliteStore::open(db.path()).await.unwrap();
    assert!(format!("{file:?}").contains(&*db.path().to_string_lossy()));
    file.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_file_lose_no_increment() {
    // Two instances of the host sharing one file: SQLite's lock, not the
    // store's queue, keeps them apart.
    let db = TempDb::new();
    let stores = [
        Arc::new(SqliteStore::open(db.path()).await.unwrap()),
        Arc::new(SqliteStore::open(db.path()).await.unwrap()),
    ];
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = stores[i % 2].clone();
            tokio::spawn(async move {
                for _ in 0..10 {
                    store
                        .increment_counters(&[Counter::new("shared", HOUR, 1)], T0)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let read = stores[0]
        .increment_counters(&[Counter::read("shared", HOUR)], T0)
        .await
        .unwrap();
    assert_eq!(read[0].count, 400);
    for store in stores {
        store.close().await;
    }
}
