#[derive(Debug)]
struct MyError;

#[distcache::distcached(expire = "10s", exec_limit = "1m")]
async fn f(id: u32) -> Result<u32, MyError> {
    Ok(id)
}

fn main() {}
