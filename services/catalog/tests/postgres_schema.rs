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
        tables, 18,
        "12 catalog tables, 5 coordination tables and the schema version"
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
