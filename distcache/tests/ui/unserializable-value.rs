#[derive(Debug)]
struct E;
impl From<distcache::Error> for E {
    fn from(_: distcache::Error) -> Self {
        E
    }
}

struct Handle;

#[distcache::distcached(expire = "10s", exec_limit = "1m")]
async fn f(id: u32) -> Result<Handle, E> {
    Ok(Handle)
}

fn main() {}
