//! The PostgreSQL store against a real server: the conformance suite, two
//! instances racing, a restart, and corrupt data.
//!
//! Set `OTP_TEST_POSTGRES_URL` (e.g. `postgres://postgres@127.0.0.1/test`);
//! without it these tests print a notice and pass, except under `CI`.

#![cfg(feature = "postgres")]

use otp_recovery::conformance::{self, server_url};
use otp_recovery::store::{CodeStore, StoreError};
use otp_recovery::{Error, FlowId, KeyRing, Recovery, RequestContext, ServerKey};
use otp_recovery_sqlx::postgres::PostgresStore;

async fn store() -> Option<PostgresStore> {
    let url = server_url("OTP_TEST_POSTGRES_URL")?;
    let store = PostgresStore::connect(&url)
        .await
        .expect("OTP_TEST_POSTGRES_URL is set but PostgreSQL cannot be reached");
    store.migrate().await.expect("the schema must apply");
    Some(store)
}

otp_recovery::code_store_conformance! {
    optional: store: store(),
    // Two host instances with their own pools.
    two_instances: async { Some((store().await?, store().await?)) },
}

#[test]
fn a_flow_survives_a_restart() {
    conformance::block_on(async {
        if store().await.is_none() {
            return;
        }
        conformance::a_reopened_store_keeps_flows_and_counts(|| async { store().await.expect("server") })
            .await;
    });
}

#[test]
fn migrating_twice_and_concurrently_is_harmless() {
    conformance::block_on(async {
        let Some(a) = store().await else { return };
        let b = a.clone();
        let (x, y) = tokio::join!(a.migrate(), b.migrate());
        x.expect("migrate");
        y.expect("migrate");
    });
}

#[test]
fn a_corrupt_record_is_a_typed_error_not_a_panic() {
    conformance::block_on(async {
        let Some(url) = server_url("OTP_TEST_POSTGRES_URL") else {
            return;
        };
        let Some(store) = store().await else { return };
        let raw = sqlx::PgPool::connect(&url).await.expect("connect");
        let id = FlowId::generate().unwrap();
        for data in [b"not a record".to_vec(), Vec::new(), vec![0xff; 300]] {
            sqlx::query(
                "INSERT INTO otp_flows (id, subject, state, version, updated_at, purge_after, data) \
                 VALUES ($1, 'account:x', 1, 1, 0, 9223372036854775807, $2) \
                 ON CONFLICT (id) DO UPDATE SET data = EXCLUDED.data",
            )
            .bind(id.as_bytes().as_slice())
            .bind(&data)
            .execute(&raw)
            .await
            .expect("insert");
            let err = store
                .get_flow(&id)
                .await
                .expect_err("corrupt data must not decode");
            assert!(matches!(err, StoreError::Decode(_)), "{err:?}");
            assert!(!err.is_retryable());
        }
        // A bad state column on a good record is refused too.
        sqlx::query("UPDATE otp_flows SET state = 99 WHERE id = $1")
            .bind(id.as_bytes().as_slice())
            .execute(&raw)
            .await
            .expect("update");
        assert!(store.get_flow(&id).await.is_err());
        let recovery = Recovery::new(
            store,
            otp_recovery::sms::RecordingSender::new(),
            KeyRing::new(1, ServerKey::generate().unwrap()),
        );
        let err = recovery
            .verify(&id, "123456", &RequestContext::without_client_ip())
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Store(_)), "{err:?}");
        sqlx::query("DELETE FROM otp_flows WHERE id = $1")
            .bind(id.as_bytes().as_slice())
            .execute(&raw)
            .await
            .expect("clean up");
    });
}

#[test]
fn a_pool_at_a_stricter_isolation_level_is_refused_on_create() {
    conformance::block_on(async {
        let Some(url) = server_url("OTP_TEST_POSTGRES_URL") else {
            return;
        };
        // Make sure the schema is there.
        let Some(_) = store().await else { return };
        // Under REPEATABLE READ a create's supersede would not see another
        // instance's create committed while it waited for the subject's
        // lock, and two flows would stay open: the store refuses instead.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("SET default_transaction_isolation = 'repeatable read'")
                        .execute(conn)
                        .await
                        .map(drop)
                })
            })
            .connect(&url)
            .await
            .expect("connect");
        let strict = PostgresStore::from_pool(pool);
        let recovery = Recovery::new(
            strict,
            otp_recovery::sms::RecordingSender::new(),
            KeyRing::new(1, ServerKey::generate().unwrap()),
        );
        let err = recovery
            .request("nobody@example.com", None, &RequestContext::without_client_ip())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Store(StoreError::Backend { .. })),
            "{err:?}"
        );
    });
}
