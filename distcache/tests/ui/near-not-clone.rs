//! `near_ttl` keeps the value and clones it out: a value type that is not
//! `Clone + Send + Sync + 'static` is an error at `near_ttl`.
use std::cell::Cell;

#[derive(serde::Serialize, serde::Deserialize)]
struct Report {
    lines: Vec<String>,
}

#[distcache::distcached(expire = "10s", exec_limit = "1m", near_ttl = "1s")]
async fn report(id: u32) -> Result<Report, distcache::Error> {
    Ok(Report { lines: vec![id.to_string()] })
}

#[distcache::distcached(expire = "10s", exec_limit = "1m", near_ttl = "1s")]
async fn counter(id: u32) -> Result<Cell<u32>, distcache::Error> {
    Ok(Cell::new(id))
}

// `near_ttl = "cache"` asks the same of the type.
#[distcache::distcached(expire = "10s", exec_limit = "1m", near_ttl = "cache")]
async fn cache_wide(id: u32) -> Result<Report, distcache::Error> {
    Ok(Report { lines: vec![id.to_string()] })
}

// A value that borrows cannot be kept past the call.
#[distcache::distcached(expire = "10s", exec_limit = "1m", near_ttl = "1s", key = s)]
async fn borrowing<'a>(s: &'a str) -> Result<std::borrow::Cow<'a, str>, distcache::Error> {
    Ok(std::borrow::Cow::Borrowed(s))
}

// Without `near_ttl`, the same types are fine: their values are simply not kept near.
#[distcache::distcached(expire = "10s", exec_limit = "1m")]
async fn plain(id: u32) -> Result<Report, distcache::Error> {
    Ok(Report { lines: vec![id.to_string()] })
}

#[distcache::distcached(expire = "10s", exec_limit = "1m", key = s)]
async fn borrowed_plain<'a>(s: &'a str) -> Result<std::borrow::Cow<'a, str>, distcache::Error> {
    Ok(std::borrow::Cow::Borrowed(s))
}

// And "0s" keeps nothing, so it asks nothing of the type.
#[distcache::distcached(expire = "10s", exec_limit = "1m", near_ttl = "0s")]
async fn off(id: u32) -> Result<Report, distcache::Error> {
    Ok(Report { lines: vec![id.to_string()] })
}

fn main() {}
