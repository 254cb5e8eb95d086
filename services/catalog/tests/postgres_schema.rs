//! The PostgreSQL backend's schema handling, against a real throwaway
//! server: migrations at start, a newer schema refused untouched, and an
//! unreachable server reported as unavailable.

use insitu_catalog::testing::TestPostgres;
use insitu_catalog::{CatalogError, PgCatalog, SCHEMA_VERSION};

async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    client
}

#[tokio::test]
async fn schema_is_migrated_once_and_a_newer_one_is_refused() {
    let pg = TestPostgres::start().expect("throwaway PostgreSQL");
    let url = pg.url("postgres");

    // Two gateways starting at once each see one applied schema.
    let (a, b) = tokio::join!(PgCatalog::connect(&url, 2), PgCatalog::connect(&url, 2));
    let (a, b) = (a.expect("first"), b.expect("second"));
    assert_eq!(a.schema_version().await.unwrap(), SCHEMA_VERSION);
    assert_eq!(b.schema_version().await.unwrap(), SCHEMA_VERSION);
    assert!(!a.describe().contains("***"));

    let client = raw(&url).await;
    let tables: i64 = client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        tables, 22,
        "16 catalog tables, 5 coordination tables and the schema version"
    );
    client
        .execute(
            "INSERT INTO tenants (name, rec) VALUES ('kept', '\\x01')",
            &[],
        )
        .await
        .unwrap();

    // A database written by a newer build is refused, and left as it is.
    client
        .execute(
            "UPDATE insitu_schema SET version = $1",
            &[&(SCHEMA_VERSION + 1)],
        )
        .await
        .unwrap();
    match PgCatalog::connect(&url, 1).await {
        Err(CatalogError::SchemaTooNew { found, known }) => {
            assert_eq!((found, known), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a newer schema was accepted"),
    }
    let version: i32 = client
        .query_one("SELECT version FROM insitu_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, SCHEMA_VERSION + 1);
    let kept: i64 = client
        .query_one("SELECT count(*) FROM tenants", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 1);
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_and_a_bad_url_is_refused() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgresql://insitu@127.0.0.1:{port}/postgres");
    match PgCatalog::connect(&url, 1).await {
        Err(CatalogError::Unavailable(_)) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("connected to nothing"),
    }
    assert!(matches!(
        PgCatalog::connect("postgresql://insitu@127.0.0.1:notaport/db", 1).await,
        Err(CatalogError::BadUrl(_))
    ));
}

#[tokio::test]
async fn schema_1_jobs_that_are_not_done_get_a_lease_to_claim() {
    let pg = TestPostgres::start().expect("throwaway PostgreSQL");
    let url = pg.url("postgres");
    let client = raw(&url).await;
    // A database as version 1 left it.
    client
        .batch_execute(include_str!("../src/pg/migrations/0001_init.sql"))
        .await
        .unwrap();
    client
        .batch_execute(
            "CREATE TABLE insitu_schema (version integer NOT NULL);
             INSERT INTO insitu_schema (version) VALUES (1);",
        )
        .await
        .unwrap();
    // Records as the backend writes them: a format byte, then JSON. One
    // has a NUL (escaped) in a name a tenant chose.
    for (id, state, output) in [
        ("j-done", "done", "b/out/"),
        ("j-running", "running", "b/out/"),
        ("j-cancelled", "cancelled", "b/out/"),
        ("j-nul", "running", "b/o\\u0000ut/"),
    ] {
        let mut rec = vec![1u8];
        rec.extend_from_slice(
            format!(
                r#"{{"id":"{id}","tenant":"t","spec":{{"output":"{output}"}},"state":"{state}"}}"#
            )
            .as_bytes(),
        );
        client
            .execute(
                "INSERT INTO jobs (tenant, id, rec) VALUES ('t', $1, $2)",
                &[&id, &rec],
            )
            .await
            .unwrap();
    }
    let catalog = PgCatalog::connect(&url, 2).await.expect("migrated");
    assert_eq!(catalog.schema_version().await.unwrap(), SCHEMA_VERSION);
    let rows = client
        .query("SELECT job FROM job_leases ORDER BY job", &[])
        .await
        .unwrap();
    let leased: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(leased, ["j-cancelled", "j-nul", "j-running"]);
}
