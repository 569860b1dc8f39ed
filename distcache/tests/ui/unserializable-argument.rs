#[derive(Debug)]
struct E;
impl From<distcache::Error> for E {
    fn from(_: distcache::Error) -> Self {
        E
    }
}

struct Connection;

#[distcache::distcached(expire = "10s", exec_limit = "1m")]
async fn f(conn: &Connection, id: u32) -> Result<u32, E> {
    Ok(id)
}

fn main() {}
