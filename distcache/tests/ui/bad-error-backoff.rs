#[derive(Debug)]
struct E;
impl From<distcache::Error> for E {
    fn from(_: distcache::Error) -> Self {
        E
    }
}

#[distcache::distcached(expire = "10s", exec_limit = "1m", error_backoff = "2 days")]
async fn a(id: u32) -> Result<u32, E> {
    Ok(id)
}

#[distcache::distcached(expire = "10s", exec_limit = "1m", error_backoff = 5)]
async fn b(id: u32) -> Result<u32, E> {
    Ok(id)
}

fn main() {}
