#[derive(Debug)]
struct E;
impl From<distcache::Error> for E {
    fn from(_: distcache::Error) -> Self {
        E
    }
}

struct Tenant {
    id: u64,
}

#[distcache::distcached(expire = "10s", exec_limit = "1m", key = (tenant, id))]
async fn invoice(tenant: &Tenant, id: u64) -> Result<u64, E> {
    Ok(tenant.id + id)
}

fn main() {}
