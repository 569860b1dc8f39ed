#[derive(Debug)]
struct E;
impl From<distcache::Error> for E {
    fn from(_: distcache::Error) -> Self {
        E
    }
}

struct Db;

#[distcache::distcached(expire = "10s", exec_limit = "1m", skip = db)]
async fn a(db: &Db, id: u32) -> Result<u32, E> {
    let _ = db;
    Ok(id)
}

#[distcache::distcached(expire = "10s", exec_limit = "1m", skip(db.pool))]
async fn b(db: &Db, id: u32) -> Result<u32, E> {
    let _ = db;
    Ok(id)
}

#[distcache::distcached(expire = "10s", exec_limit = "1m", skip(db), skip(db))]
async fn c(db: &Db, id: u32) -> Result<u32, E> {
    let _ = db;
    Ok(id)
}

fn main() {}
