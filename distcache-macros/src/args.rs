//! Parsing and checking `#[distcached(...)]`'s arguments. Every problem is reported, each at its
//! own tokens.

use std::time::Duration;

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::ext::IdentExt;
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::{Expr, ExprLit, Ident, Lit, LitStr, Meta, Token};

/// distcache's longest `expire` or `exec_limit`.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

const VALID: &str = "`expire`, `exec_limit`, `name`, `cache`, `skip(...)`, `key`, \
                     `refresh_ahead`, `error_backoff`, `stale_if_error`, `soft_timeout`, \
                     `near_ttl` and `helpers`";

/// The checked arguments.
pub(crate) struct Args {
    pub(crate) expire: Duration,
    pub(crate) exec_limit: Duration,
    pub(crate) name: Option<LitStr>,
    pub(crate) cache: Option<Expr>,
    /// The arguments left out of the key, `self` included, as written (checked against the
    /// function's by `expand::check`), and the `skip` keyword's span.
    pub(crate) skip: Option<(Span, Vec<Ident>)>,
    /// The key's value, replacing the argument list.
    pub(crate) key: Option<Expr>,
    /// The per-function options, as calls of `GetOptions`' builder methods, in order: a new
    /// option is parsed here and needs nothing from `expand.rs`.
    pub(crate) options: Vec<TokenStream>,
    /// Whether to emit `<fn>_key` and `<fn>_invalidate` beside the function (not in a trait
    /// impl, which takes no other items).
    pub(crate) helpers: bool,
    /// `soft_timeout`'s span, if given: the getter may then finish in the background, so the
    /// function must not borrow (`expand::check`), and its call is the detached one.
    pub(crate) soft_timeout: Option<Span>,
    /// `near_ttl`'s span, if given and not `"0s"`: the function's values are kept near, and its
    /// value type must allow it (an error spanned there).
    pub(crate) near_ttl: Option<Span>,
}

pub(crate) fn parse(tokens: TokenStream) -> syn::Result<Args> {
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse2(tokens)?;
    let mut errors = Errors::default();
    let (mut expire, mut exec_limit, mut name, mut cache) = (None, None, None, None);
    let (mut skip, mut key, mut helpers) = (None, None, None);
    let mut soft_timeout = None;
    let mut near_ttl = None;
    let mut options = Vec::new();
    let mut given = Vec::new();
    for meta in metas {
        if let Meta::List(list) = &meta
            && list.path.is_ident("skip")
        {
            if given.iter().any(|g| g == "skip") {
                errors.push(syn::Error::new_spanned(
                    &list.path,
                    "duplicate argument `skip`",
                ));
                continue;
            }
            given.push("skip".to_owned());
            let names = (|input: syn::parse::ParseStream<'_>| {
                Punctuated::<Ident, Token![,]>::parse_terminated_with(input, Ident::parse_any)
            })
            .parse2(list.tokens.clone())
            .map(|names| names.into_iter().collect::<Vec<_>>());
            match names {
                Ok(names) => skip = Some((list.path.span(), names)),
                Err(err) => errors.push(syn::Error::new(
                    err.span(),
                    "expected the names of arguments to leave out of the key, as in `skip(db, self)`",
                )),
            }
            continue;
        }
        let Meta::NameValue(nv) = meta else {
            // Reported here; not again as missing.
            if let Some(ident) = meta.path().get_ident() {
                given.push(ident.to_string());
            }
            errors.push(syn::Error::new_spanned(
                &meta,
                format!(
                    "expected `name = value`, as in `expire = \"10s\"`; the arguments are {VALID}"
                ),
            ));
            continue;
        };
        let Some(ident) = nv.path.get_ident().map(ToString::to_string) else {
            errors.push(syn::Error::new_spanned(
                &nv.path,
                format!("unknown argument; the arguments are {VALID}"),
            ));
            continue;
        };
        if given.contains(&ident) {
            errors.push(syn::Error::new_spanned(
                &nv.path,
                format!("duplicate argument `{ident}`"),
            ));
            continue;
        }
        given.push(ident.clone());
        match ident.as_str() {
            "expire" => set(&mut expire, duration(&nv.value), &mut errors),
            "exec_limit" => set(&mut exec_limit, duration(&nv.value), &mut errors),
            "name" => set(&mut name, function_name(&nv.value), &mut errors),
            "cache" => set(&mut cache, Ok(nv.value.clone()), &mut errors),
            "key" => set(&mut key, Ok(nv.value.clone()), &mut errors),
            "helpers" => set(&mut helpers, boolean(&nv.value), &mut errors),
            "error_backoff" => match duration(&nv.value) {
                Ok(d) if d > Duration::from_secs(24 * 3600) => errors.push(syn::Error::new(
                    nv.value.span(),
                    "error_backoff is at most one day",
                )),
                Ok(d) => {
                    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
                    options
                        .push(quote!(.error_backoff(::core::time::Duration::new(#secs, #nanos))));
                }
                Err(err) => errors.push(err),
            },
            "soft_timeout" => match setting(&nv.value, "soft_timeout", false) {
                Ok(d) => {
                    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
                    soft_timeout = Some(nv.path.span());
                    options.push(quote!(.soft_timeout(::core::time::Duration::new(#secs, #nanos))));
                }
                Err(err) => errors.push(err),
            },
            "stale_if_error" => match setting(&nv.value, "stale_if_error", true) {
                Ok(d) => {
                    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
                    options
                        .push(quote!(.stale_if_error(::core::time::Duration::new(#secs, #nanos))));
                }
                Err(err) => errors.push(err),
            },
            // `"cache"`: the cache's `near_ttl` (the builder's, or `DISTCACHE_NEAR_TTL`).
            "near_ttl" if is_str(&nv.value, "cache") => near_ttl = Some(nv.path.span()),
            "near_ttl" => match setting(&nv.value, "near_ttl", true) {
                // Off: nothing to keep, and nothing asked of the value type.
                Ok(d) if d.is_zero() => {}
                Ok(d) => {
                    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
                    near_ttl = Some(nv.path.span());
                    options.push(quote!(.near_ttl(::core::time::Duration::new(#secs, #nanos))));
                }
                Err(err) => errors.push(err),
            },
            "refresh_ahead" => match fraction(&nv.value) {
                Ok(fraction) => options.push(quote!(.refresh_ahead(#fraction))),
                Err(err) => errors.push(err),
            },
            "skip" => errors.push(syn::Error::new_spanned(
                &nv,
                "write the arguments to leave out of the key as a list: `skip(db, self)`",
            )),
            other => {
                let meant = match other {
                    "ttl" | "expiry" | "expires" | "expiration" | "max_age" => Some("expire"),
                    "timeout" | "limit" | "exec_timeout" | "deadline" => Some("exec_limit"),
                    "prefix" => Some("name"),
                    "ignore" | "exclude" | "skip_args" => Some("skip"),
                    _ => None,
                };
                let hint = match meant {
                    Some(meant) => {
                        // Reported here with the hint; not again as missing.
                        given.push(meant.to_owned());
                        format!(" (did you mean `{meant}`?)")
                    }
                    None => String::new(),
                };
                errors.push(syn::Error::new_spanned(
                    &nv.path,
                    format!("unknown argument `{other}`{hint}; the arguments are {VALID}"),
                ));
            }
        }
    }
    let required = |value: Option<Duration>, what: &str, errors: &mut Errors| {
        if !given.iter().any(|g| g == what) {
            errors.push(syn::Error::new(
                Span::call_site(),
                format!("missing `{what} = \"...\"`: `#[distcached(expire = \"10s\", exec_limit = \"1m\")]`"),
            ));
        }
        value
    };
    let expire = required(expire, "expire", &mut errors);
    let exec_limit = required(exec_limit, "exec_limit", &mut errors);
    errors.finish()?;
    Ok(Args {
        expire: expire.expect("checked"),
        exec_limit: exec_limit.expect("checked"),
        name,
        cache,
        skip,
        key,
        options,
        helpers: helpers.unwrap_or(true),
        soft_timeout,
        near_ttl,
    })
}

fn set<T>(slot: &mut Option<T>, value: syn::Result<T>, errors: &mut Errors) {
    match value {
        Ok(value) => *slot = Some(value),
        Err(err) => errors.push(err),
    }
}

fn string(value: &Expr, what: &str) -> syn::Result<LitStr> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) => Ok(s.clone()),
        other => Err(syn::Error::new(
            other.span(),
            format!("expected a string literal: {what}"),
        )),
    }
}

fn duration(value: &Expr) -> syn::Result<Duration> {
    let lit = string(value, "a duration such as \"10s\", \"500ms\" or \"1h 30m\"")?;
    match humantime::parse_duration(&lit.value()) {
        Ok(d) if d.is_zero() => Err(syn::Error::new(
            lit.span(),
            "the duration must be more than zero",
        )),
        Ok(d) if d > MAX_DURATION => Err(syn::Error::new(
            lit.span(),
            "the duration must be at most 365 days",
        )),
        Ok(d) => Ok(d),
        Err(err) => Err(syn::Error::new(
            lit.span(),
            format!(
                "invalid duration {:?}: {err}; write it as \"10s\", \"500ms\" or \"1h 30m\"",
                lit.value()
            ),
        )),
    }
}

/// A duration setting as the runtime takes it: at least 1 ms, at most 365 days, or, where
/// `zero_is_off`, zero (`"0s"`) to turn the cache's setting off for the function.
fn setting(value: &Expr, name: &str, zero_is_off: bool) -> syn::Result<Duration> {
    if zero_is_off
        && let Expr::Lit(ExprLit {
            lit: Lit::Str(lit), ..
        }) = value
        && humantime::parse_duration(&lit.value()).is_ok_and(|d| d.is_zero())
    {
        return Ok(Duration::ZERO);
    }
    let d = duration(value)?;
    if d < Duration::from_millis(1) {
        let off = if zero_is_off { " (or \"0s\": off)" } else { "" };
        return Err(syn::Error::new(
            value.span(),
            format!("{name} is at least 1ms{off}"),
        ));
    }
    Ok(d)
}

/// Whether `value` is the string literal `text`.
fn is_str(value: &Expr, text: &str) -> bool {
    matches!(value, Expr::Lit(ExprLit { lit: Lit::Str(lit), .. }) if lit.value() == text)
}

fn boolean(value: &Expr) -> syn::Result<bool> {
    match value {
        Expr::Lit(ExprLit {
            lit: Lit::Bool(b), ..
        }) => Ok(b.value),
        other => Err(syn::Error::new(other.span(), "expected `true` or `false`")),
    }
}

/// A `refresh_ahead` fraction: a number literal at least 0 and under 1.
fn fraction(value: &Expr) -> syn::Result<f64> {
    let parsed = match value {
        Expr::Lit(ExprLit {
            lit: Lit::Float(f), ..
        }) => f.base10_parse::<f64>().ok(),
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_parse::<u32>().ok().map(f64::from),
        _ => None,
    };
    match parsed {
        Some(f) if (0.0..1.0).contains(&f) => Ok(f),
        Some(_) => Err(syn::Error::new(
            value.span(),
            "refresh_ahead is a fraction of `expire`: at least 0 (off) and under 1, as in 0.2",
        )),
        None => Err(syn::Error::new(
            value.span(),
            "expected a number: the fraction of `expire` to refresh ahead, as in 0.2",
        )),
    }
}

fn function_name(value: &Expr) -> syn::Result<LitStr> {
    let lit = string(
        value,
        "the function's name in keys, such as \"billing::invoice_total\"",
    )?;
    if lit.value().is_empty() {
        return Err(syn::Error::new(lit.span(), "the name must not be empty"));
    }
    Ok(lit)
}

/// Collects errors to report them all at once.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, err: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(err),
            None => self.0 = Some(err),
        }
    }

    pub(crate) fn finish(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }
}
