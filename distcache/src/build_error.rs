//! Why a configuration was refused: apart from the call errors (`error.rs`), so that the
//! configuration's types (a `Server`) may use it without depending on those.

/// Why [`CacheBuilder::build`](crate::CacheBuilder::build) refused a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The namespace is longer than the limit or holds a character memcached keys cannot carry.
    #[error("invalid namespace {namespace:?}: {reason}")]
    InvalidNamespace {
        /// The namespace as given.
        namespace: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A server is not `host:port[:weight]`, or is listed twice.
    #[error("invalid server {server:?}: {reason}")]
    InvalidServer {
        /// The server as given.
        server: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A size, count or duration is out of its range.
    #[error("invalid {setting}: {reason}")]
    InvalidSetting {
        /// The builder method that set it.
        setting: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}
