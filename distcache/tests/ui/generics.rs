#[derive(Debug)]
struct E;
impl From<distcache::Error> for E {
    fn from(_: distcache::Error) -> Self {
        E
    }
}

#[distcache::distcached(expire = "10s", exec_limit = "1m")]
async fn f<T: serde::Serialize, const N: usize>(x: T) -> Result<u32, E> {
    Ok(N as u32)
}

fn main() {}
