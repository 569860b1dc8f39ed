#[derive(Debug)]
struct E;
impl From<distcache::Error> for E {
    fn from(_: distcache::Error) -> Self {
        E
    }
}

#[distcache::distcached]
async fn none() -> Result<u32, E> {
    Ok(1)
}

#[distcache::distcached(expire = "10s")]
async fn no_limit() -> Result<u32, E> {
    Ok(1)
}

fn main() {}
