#[derive(Debug)]
struct E;
impl From<distcache::Error> for E {
    fn from(_: distcache::Error) -> Self {
        E
    }
}

#[distcache::distcached(expire = "10s", exec_limit = "1m")]
fn f(x: u32) -> Result<u32, E> {
    Ok(x)
}

fn main() {}
