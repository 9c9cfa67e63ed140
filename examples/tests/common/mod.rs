//! What several test files share: a PostgreSQL schema of their own.
#![allow(dead_code)]

use std::sync::Arc;

use orch_state::PgStore;

/// A schema of its own in the test database, dropped at the end.
pub struct Db {
    admin: tokio_postgres::Client,
    schema: String,
    /// A URL whose connections work in the schema.
    pub url: String,
}

impl Db {
    /// A fresh schema `orch_test_<name>_<pid>`.
    pub async fn new(name: &str) -> Db {
        let base = std::env::var("ORCH_TEST_DATABASE_URL")
            .expect("ORCH_TEST_DATABASE_URL names the test database");
        let schema = format!("orch_test_{name}_{}", std::process::id());
        let (admin, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        admin
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
            ))
            .await
            .unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
        Db { admin, schema, url }
    }

    /// A store on the schema.
    pub async fn store(&self) -> Arc<PgStore> {
        Arc::new(PgStore::connect(&self.url).await.unwrap())
    }

    /// Drops the schema.
    pub async fn drop(self) {
        self.admin
            .batch_execute(&format!("DROP SCHEMA {} CASCADE", self.schema))
            .await
            .unwrap();
    }
}
