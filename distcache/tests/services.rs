//! `#[distcached]` on the functions services have: a handle left out of the key (`skip`),
//! methods (`skip(self)`), a key expression (`key`), and each entry's key and invalidation
//! (`<fn>_key`, `<fn>_invalidate`). Each runs once per key, on the in-process store and on
//! memcached, and the keys are checked byte for byte.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use distcache::{Cache, distcached};
use support::memcached::Memcached;

#[derive(Debug, PartialEq, thiserror::Error)]
enum AppError {
    #[error("cache: {0}")]
    Cache(String),
}

impl From<distcache::Error> for AppError {
    fn from(err: distcache::Error) -> Self {
        AppError::Cache(err.to_string())
    }
}

/// A database handle: not `Serialize`, counts the queries it runs.
#[derive(Default)]
struct Db {
    queries: AtomicUsize,
}

impl Db {
    async fn query(&self, what: String) -> String {
        self.queries.fetch_add(1, Ordering::SeqCst);
        tokio::task::yield_now().await;
        what
    }
}

/// A tenant: not `Serialize` either.
struct Tenant {
    id: u64,
    name: String,
    db: Db,
}

/// The cache under test: in-process, or on a memcached started for the test binary.
static STORE: LazyLock<Cache> = LazyLock::new(|| match std::env::var("DC_SERVICES_SERVER") {
    Ok(server) => Cache::builder().server(server).build().unwrap(),
    Err(_) => Cache::builder().build().unwrap(),
});

#[distcached(expire = "30s", exec_limit = "5s", skip(db), cache = STORE)]
async fn user(db: &Db, id: u64) -> Result<String, AppError> {
    Ok(db.query(format!("user {id}")).await)
}

struct Service {
    db: Db,
}

impl Service {
    #[distcached(expire = "30s", exec_limit = "5s", skip(self), cache = STORE)]
    async fn profile(&self, id: u64) -> Result<String, AppError> {
        Ok(self.db.query(format!("profile {id}")).await)
    }
}

/// A second type with a method of the same name, in the same module.
struct Other {
    db: Db,
}

impl Other {
    #[distcached(expire = "30s", exec_limit = "5s", skip(self), cache = STORE)]
    async fn profile(self: &Arc<Self>, id: u64) -> Result<String, AppError> {
        Ok(self.db.query(format!("other profile {id}")).await)
    }
}

#[distcached(expire = "30s", exec_limit = "5s", key = (tenant.id, id), cache = STORE)]
async fn invoice(tenant: &Tenant, id: u64) -> Result<String, AppError> {
    Ok(tenant
        .db
        .query(format!("invoice {id} of {}", tenant.id))
        .await)
}

/// A key that borrows a field that is not `Copy`.
#[distcached(expire = "30s", exec_limit = "5s", key = (tenant.name, id), cache = STORE)]
async fn statement(tenant: &Tenant, id: u64) -> Result<String, AppError> {
    Ok(tenant
        .db
        .query(format!("statement {id} of {}", tenant.name))
        .await)
}

/// A service that holds its own cache, which the attribute reads through `self`.
struct Own {
    cache: Cache,
    db: Db,
}

impl Own {
    #[distcached(expire = "30s", exec_limit = "5s", skip(self), cache = self.cache)]
    async fn item(&self, id: u64) -> Result<String, AppError> {
        Ok(self.db.query(format!("item {id}")).await)
    }
}

/// A trait implemented with a cached method: a trait impl takes no other items, so the helpers
/// are turned off.
trait Catalog {
    async fn title(&self, id: u64) -> Result<String, AppError>;
}

impl Catalog for Service {
    #[distcached(expire = "30s", exec_limit = "5s", skip(self), helpers = false, cache = STORE)]
    async fn title(&self, id: u64) -> Result<String, AppError> {
        Ok(self.db.query(format!("title {id}")).await)
    }
}

#[distcached(expire = "30s", exec_limit = "5s", key = id, cache = STORE)]
async fn receipt(tenant: &Tenant, id: u64) -> Result<String, AppError> {
    Ok(tenant.db.query(format!("receipt {id}")).await)
}

#[distcached(expire = "30s", exec_limit = "5s", key = (), cache = STORE)]
async fn settings(db: &Db) -> Result<String, AppError> {
    Ok(db.query("settings".into()).await)
}

static REPORT_RUNS: AtomicUsize = AtomicUsize::new(0);

#[distcached(expire = "30s", exec_limit = "5s", refresh_ahead = 0.2, cache = STORE)]
async fn report(day: u32) -> Result<String, AppError> {
    REPORT_RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(format!("report {day}"))
}

/// A method whose key says what tells instances apart.
struct Shard {
    id: u32,
    db: Db,
}

impl Shard {
    #[distcached(expire = "30s", exec_limit = "5s", key = (self.id, id), cache = STORE)]
    async fn row(&self, id: u64) -> Result<String, AppError> {
        Ok(self
            .db
            .query(format!("row {id} of shard {}", self.id))
            .await)
    }
}

/// Where each test's keys live: one namespace per test in the shared cache (the keys differ).
fn module() -> &'static str {
    module_path!()
}

async fn the_forms_run_once_per_key_with_their_keys() {
    let db = Db::default();
    let (a, b, c) = tokio::join!(user(&db, 1), user(&db, 1), user(&db, 2));
    assert_eq!(
        (a.unwrap(), b.unwrap(), c.unwrap()),
        ("user 1".into(), "user 1".into(), "user 2".into())
    );
    assert_eq!(
        db.queries.load(Ordering::SeqCst),
        2,
        "once per key, the handle left out"
    );
    assert_eq!(user_key(1).unwrap(), format!("{}::user[1]", module()));

    let service = Service { db: Db::default() };
    let other = Arc::new(Other { db: Db::default() });
    assert_eq!(service.profile(7).await.unwrap(), "profile 7");
    assert_eq!(service.profile(7).await.unwrap(), "profile 7");
    assert_eq!(
        other.profile(7).await.unwrap(),
        "other profile 7",
        "not Service's entry"
    );
    assert_eq!(service.db.queries.load(Ordering::SeqCst), 1);
    assert_eq!(other.db.queries.load(Ordering::SeqCst), 1);
    assert_eq!(
        Service::profile_key(7).unwrap(),
        format!("{}::Service::profile[7]", module())
    );
    assert_eq!(
        Other::profile_key(7).unwrap(),
        format!("{}::Other::profile[7]", module())
    );

    let tenant = Tenant {
        id: 3,
        name: "acme".into(),
        db: Db::default(),
    };
    assert_eq!(invoice(&tenant, 42).await.unwrap(), "invoice 42 of 3");
    assert_eq!(invoice(&tenant, 42).await.unwrap(), "invoice 42 of 3");
    assert_eq!(tenant.db.queries.load(Ordering::SeqCst), 1);
    assert_eq!(
        invoice_key(&tenant, 42).unwrap(),
        format!("{}::invoice[3,42]", module())
    );
    assert_eq!(
        receipt_key(&tenant, 42).unwrap(),
        format!("{}::receipt[42]", module())
    );
    let (one, two) = (Db::default(), Db::default());
    assert_eq!(
        settings_key(&one).unwrap(),
        format!("{}::settings[]", module())
    );
    assert_eq!(settings(&one).await.unwrap(), "settings");
    assert_eq!(settings(&two).await.unwrap(), "settings");
    assert_eq!(
        (
            one.queries.load(Ordering::SeqCst),
            two.queries.load(Ordering::SeqCst)
        ),
        (1, 0),
        "one entry for every call"
    );

    let (left, right) = (
        Shard {
            id: 1,
            db: Db::default(),
        },
        Shard {
            id: 2,
            db: Db::default(),
        },
    );
    assert_eq!(left.row(5).await.unwrap(), "row 5 of shard 1");
    assert_eq!(
        right.row(5).await.unwrap(),
        "row 5 of shard 2",
        "another instance's entry"
    );
    assert_eq!(left.row(5).await.unwrap(), "row 5 of shard 1");
    assert_eq!(left.db.queries.load(Ordering::SeqCst), 1);
    assert_eq!(
        left.row_key(5).unwrap(),
        format!("{}::Shard::row[1,5]", module())
    );

    assert_eq!(statement(&tenant, 9).await.unwrap(), "statement 9 of acme");
    assert_eq!(
        statement_key(&tenant, 9).unwrap(),
        format!("{}::statement[\"acme\",9]", module())
    );
    let own = Own {
        cache: STORE.clone(),
        db: Db::default(),
    };
    assert_eq!(own.item(1).await.unwrap(), "item 1");
    assert_eq!(own.item(1).await.unwrap(), "item 1");
    own.item_invalidate(1).await.unwrap();
    assert_eq!(own.item(1).await.unwrap(), "item 1");
    assert_eq!(
        own.db.queries.load(Ordering::SeqCst),
        2,
        "invalidated through self.cache"
    );
    assert_eq!(service.title(4).await.unwrap(), "title 4");
    assert_eq!(service.title(4).await.unwrap(), "title 4");
    assert_eq!(
        service.db.queries.load(Ordering::SeqCst),
        2,
        "profile once, title once"
    );

    let (a, b, c) = tokio::join!(report(1), report(1), report(2));
    assert_eq!(
        (a.unwrap(), b.unwrap(), c.unwrap()),
        ("report 1".into(), "report 1".into(), "report 2".into())
    );
    assert_eq!(REPORT_RUNS.load(Ordering::SeqCst), 2, "once per key");
    assert_eq!(report_key(1).unwrap(), format!("{}::report[1]", module()));

    // The key is what the cache stores under: a direct get with it finds the macro's value.
    let second = std::time::Duration::from_secs(1);
    let stored: String = STORE
        .get(
            &invoice_key(&tenant, 42).unwrap(),
            second,
            second,
            || async { Ok::<_, distcache::Error>("not this".to_owned()) },
        )
        .await
        .unwrap();
    assert_eq!(stored, "invoice 42 of 3");

    // Invalidation by arguments: the next call computes again, once.
    let queries = |db: &Db| db.queries.load(Ordering::SeqCst);
    let before = queries(&tenant.db);
    invoice_invalidate(&tenant, 42).await.unwrap();
    assert_eq!(invoice(&tenant, 42).await.unwrap(), "invoice 42 of 3");
    assert_eq!(invoice(&tenant, 42).await.unwrap(), "invoice 42 of 3");
    assert_eq!(queries(&tenant.db), before + 1, "computed again, once");
    let before = queries(&service.db);
    service.profile_invalidate(7).await.unwrap();
    assert_eq!(service.profile(7).await.unwrap(), "profile 7");
    assert_eq!(queries(&service.db), before + 1);
    assert_eq!(
        other.db.queries.load(Ordering::SeqCst),
        1,
        "Other's entry stays"
    );
    user_invalidate(&db, 1).await.unwrap();
    user(&db, 1).await.unwrap();
    assert_eq!(db.queries.load(Ordering::SeqCst), 3);
}

/// In a second process on the same memcached: every entry the first process left is found, and
/// no getter runs. The same methods, keyed alike in two processes.
async fn a_second_process_finds_the_first_ones_entries() {
    let db = Db::default();
    assert_eq!(user(&db, 1).await.unwrap(), "user 1");
    let service = Service { db: Db::default() };
    assert_eq!(service.profile(7).await.unwrap(), "profile 7");
    let other = Arc::new(Other { db: Db::default() });
    assert_eq!(other.profile(7).await.unwrap(), "other profile 7");
    let tenant = Tenant {
        id: 3,
        name: "acme".into(),
        db: Db::default(),
    };
    assert_eq!(invoice(&tenant, 42).await.unwrap(), "invoice 42 of 3");
    assert_eq!(report(1).await.unwrap(), "report 1");
    let queries =
        [&db, &service.db, &other.db, &tenant.db].map(|db| db.queries.load(Ordering::SeqCst));
    assert_eq!(queries, [0; 4], "every entry found");
    assert_eq!(REPORT_RUNS.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_forms_on_the_in_process_store_and_on_memcached() {
    // The in-process store first; then the same in a child process on memcached (the cache is
    // a static: one store per process), and a second child that finds the first one's entries.
    match std::env::var("DC_SERVICES_ROLE").as_deref() {
        Ok("first") => return the_forms_run_once_per_key_with_their_keys().await,
        Ok("second") => return a_second_process_finds_the_first_ones_entries().await,
        _ => {}
    }
    the_forms_run_once_per_key_with_their_keys().await;
    let server = Memcached::start().await;
    for role in ["first", "second"] {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "the_forms_on_the_in_process_store_and_on_memcached",
            ])
            .env("DC_SERVICES_SERVER", server.addr())
            .env("DC_SERVICES_ROLE", role)
            .status()
            .unwrap();
        assert!(status.success(), "the {role} process on memcached");
    }
    assert!(
        STORE.server_for("k").is_none(),
        "the parent used the in-process store"
    );
}
