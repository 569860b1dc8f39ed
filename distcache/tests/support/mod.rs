//! Test support shared by the integration tests.
#![allow(dead_code)]

pub mod history;
pub mod kids;
pub mod memcached;
pub mod proxy;
pub mod tls;
