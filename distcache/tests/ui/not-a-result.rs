#[distcache::distcached(expire = "10s", exec_limit = "1m")]
async fn no_return_type(id: u32) {}

#[distcache::distcached(expire = "10s", exec_limit = "1m")]
async fn plain_value(id: u32) -> u32 {
    id
}

fn main() {}
