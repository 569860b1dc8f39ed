#[derive(Debug)]
struct E;
impl From<distcache::Error> for E {
    fn from(_: distcache::Error) -> Self {
        E
    }
}

#[distcache::distcached(expire("10s"), exec_limit = "1m", name = some_name)]
async fn f() -> Result<u32, E> {
    Ok(1)
}

fn main() {}
