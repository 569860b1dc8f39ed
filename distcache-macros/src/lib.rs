//! The `#[distcached]` attribute of the [`distcache`](https://docs.rs/distcache) crate; use it
//! from there, as `distcache::distcached`, where it is documented.
#![deny(missing_docs)]

mod args;
mod expand;

use proc_macro::TokenStream;

/// Caches an `async fn` in distcache. See `distcache::distcached` for its documentation.
#[proc_macro_attribute]
pub fn distcached(args: TokenStream, item: TokenStream) -> TokenStream {
    expand::distcached(args.into(), item.into()).into()
}
