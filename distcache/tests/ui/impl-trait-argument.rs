#[derive(Debug)]
struct E;
impl From<distcache::Error> for E {
    fn from(_: distcache::Error) -> Self {
        E
    }
}

#[distcache::distcached(expire = "10s", exec_limit = "1m")]
async fn f(x: impl serde::Serialize, y: Vec<impl Into<u32>>) -> Result<u32, E> {
    Ok(1)
}

fn main() {}
