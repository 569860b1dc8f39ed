#[distcache::distcached(expire = "10s", exec_limit = "1m")]
struct NotAFunction;

fn main() {}
