#[derive(Debug)]
struct E;
impl From<distcache::Error> for E {
    fn from(_: distcache::Error) -> Self {
        E
    }
}

struct Service;

impl Service {
    #[distcache::distcached(expire = "10s", exec_limit = "1m", skip(self))]
    async fn load(&mut self, id: u32) -> Result<u32, E> {
        Ok(id)
    }

    #[distcache::distcached(expire = "10s", exec_limit = "1m", skip(self))]
    async fn take(self, id: u32) -> Result<u32, E> {
        Ok(id)
    }
}

fn main() {}
