#[derive(Debug)]
struct E;
impl From<distcache::Error> for E {
    fn from(_: distcache::Error) -> Self {
        E
    }
}

struct Db;

#[distcache::distcached(expire = "10s", exec_limit = "1m", skip(db))]
async fn settings(db: &Db) -> Result<u32, E> {
    let _ = db;
    Ok(1)
}

fn main() {}
