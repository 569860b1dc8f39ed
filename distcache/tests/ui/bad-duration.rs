#[derive(Debug)]
struct E;
impl From<distcache::Error> for E {
    fn from(_: distcache::Error) -> Self {
        E
    }
}

#[distcache::distcached(expire = "10 parsecs", exec_limit = "0s")]
async fn f() -> Result<u32, E> {
    Ok(1)
}

#[distcache::distcached(expire = 10, exec_limit = "1m")]
async fn g() -> Result<u32, E> {
    Ok(1)
}

#[distcache::distcached(expire = "400 days", exec_limit = "1m")]
async fn h() -> Result<u32, E> {
    Ok(1)
}

fn main() {}
