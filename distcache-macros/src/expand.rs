//! Parse, check, expand: three plain steps. On any error the function is emitted unchanged,
//! beside the errors, so that the user sees those errors and not a cascade from a broken item.

use std::time::Duration;

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Expr, FnArg, GenericParam, ItemFn, Pat, ReceiverKind, ReturnType, Type};

use crate::args::{self, Args, Errors};

pub(crate) fn distcached(args: TokenStream, item: TokenStream) -> TokenStream {
    let function: ItemFn = match syn::parse2(item.clone()) {
        Ok(function) => function,
        Err(_) => {
            let err = syn::Error::new(
                Span::call_site(),
                "#[distcached] applies to an `async fn` returning `Result<T, E>`",
            );
            return with_errors(item, err);
        }
    };
    let args = args::parse(args);
    let checked = check(&function, args.as_ref().ok());
    match (args, checked) {
        (Ok(args), Ok(())) => expand(args, function),
        (args, checked) => {
            let mut errors = Errors::default();
            if let Err(err) = args {
                errors.push(err);
            }
            if let Err(err) = checked {
                errors.push(err);
            }
            let err = errors.finish().expect_err("one of them failed");
            with_errors(item, err)
        }
    }
}

fn with_errors(item: TokenStream, err: syn::Error) -> TokenStream {
    let errors = err.into_compile_error();
    quote!(#item #errors)
}

/// What the key cannot represent, or the expansion cannot keep, is refused at its own tokens.
/// `args` is `None` when they did not parse (their errors are reported apart).
fn check(function: &ItemFn, args: Option<&Args>) -> syn::Result<()> {
    let sig = &function.sig;
    let mut errors = Errors::default();
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new_spanned(
            sig.fn_token,
            "#[distcached] applies to an `async fn`: the cached call awaits the store",
        ));
    }
    for param in &sig.generics.params {
        match param {
            GenericParam::Lifetime(_) => {}
            GenericParam::Type(_) | GenericParam::Const(_) => errors.push(syn::Error::new_spanned(
                param,
                "#[distcached] functions cannot be generic: the key could not tell the instantiations apart",
            )),
        }
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(syn::Error::new_spanned(
            variadic,
            "#[distcached] functions cannot be variadic",
        ));
    }
    // The arguments that failed to parse are reported apart: nothing here depends on them then.
    let parsed = args.is_some();
    let has_key = args.is_some_and(|args| args.key.is_some());
    // With `soft_timeout`, the getter may run on after the call returns: it cannot borrow.
    let detached = args.and_then(|args| args.soft_timeout);
    let borrows = |span: Span, what: &str| {
        syn::Error::new(
            span,
            format!(
                "`soft_timeout` lets the function's body finish after the call has returned, so \
                 it cannot borrow, and {what}; pass owned handles instead (an `Arc`, a cloned \
                 pool), or drop `soft_timeout`"
            ),
        )
    };
    let skipped = |name: &str| {
        args.and_then(|args| args.skip.as_ref())
            .is_some_and(|(_, names)| names.iter().any(|n| n == name))
    };
    // The names `skip` may use: the receiver's and each argument bound by a plain name.
    let mut names: Vec<String> = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => {
                names.push("self".to_owned());
                if detached.is_some() {
                    errors.push(borrows(receiver.span(), "this method borrows `self`"));
                }
                let shared = match &receiver.kind {
                    ReceiverKind::Reference(_, _, mutability) => Some(mutability.is_none()),
                    ReceiverKind::Typed(_, ty) => match &**ty {
                        Type::Reference(reference) => Some(reference.mutability.is_none()),
                        _ => None,
                    },
                    _ => None,
                };
                match shared {
                    Some(true) => {
                        if parsed && !skipped("self") && !has_key {
                            errors.push(syn::Error::new_spanned(
                                receiver,
                                "`self` is not part of the key: add `skip(self)` to leave it out \
                                 (calls on every instance then share their entries), or say what \
                                 tells instances apart with `key = (self.id, ...)`",
                            ));
                        }
                    }
                    Some(false) => errors.push(syn::Error::new_spanned(
                        receiver,
                        "#[distcached] methods take `&self`: with `&mut self`, the calls that share \
                         an entry would need the instance mutably at once",
                    )),
                    None => errors.push(syn::Error::new_spanned(
                        receiver,
                        "#[distcached] methods take `&self` (or `self: &Arc<Self>`), not `self` by \
                         value: the calls that share an entry would each need an instance to give",
                    )),
                }
            }
            FnArg::Typed(arg) => {
                // Only an argument bound by a plain name can be skipped (or read by `key`).
                let name = match &*arg.pat {
                    Pat::Ident(binding) if binding.by_ref.is_none() && binding.subpat.is_none() => {
                        Some(binding.ident.to_string())
                    }
                    _ => None,
                };
                let in_key = parsed && !has_key && !name.as_deref().is_some_and(skipped);
                if in_key && let Some(span) = impl_trait(arg.ty.to_token_stream()) {
                    errors.push(syn::Error::new(
                        span,
                        "#[distcached] arguments cannot be `impl Trait`: the key needs one concrete, \
                         serializable type (or leave it out with `skip`)",
                    ));
                }
                if detached.is_some()
                    && let Some(span) = borrowed(arg.ty.to_token_stream())
                {
                    errors.push(borrows(span, "this argument's type borrows"));
                }
                names.extend(name);
            }
        }
    }
    if let Some((skip_span, skip)) = args.and_then(|args| args.skip.as_ref()) {
        if has_key {
            errors.push(syn::Error::new(
                *skip_span,
                "`skip` does nothing with `key`: the key is `key`'s value alone; remove `skip`",
            ));
        }
        for (i, name) in skip.iter().enumerate() {
            let written = name.to_string();
            if skip[..i].iter().any(|n| *n == written) {
                errors.push(syn::Error::new_spanned(
                    name,
                    format!("`{written}` is skipped twice"),
                ));
            } else if !names.contains(&written) {
                errors.push(syn::Error::new_spanned(
                    name,
                    format!(
                        "no argument `{written}` to skip; the arguments are: {}",
                        names.join(", ")
                    ),
                ));
            }
        }
        if !has_key
            && !sig.inputs.is_empty()
            && names.len() == sig.inputs.len()
            && names.iter().all(|n| skipped(n))
        {
            errors.push(syn::Error::new(
                *skip_span,
                "every argument is skipped: every call would share one entry; if that is meant, \
                 say so with `key = ()`",
            ));
        }
    }
    // `near_ttl` keeps the value past the call: it cannot borrow (the compiler would say so in
    // its own words, far from here).
    if let Some(span) = args.and_then(|args| args.near_ttl)
        && let ReturnType::Type(_, ty) = &sig.output
        && borrowed(ty.to_token_stream()).is_some()
    {
        errors.push(syn::Error::new(
            span,
            "`near_ttl` keeps the function's value in this process beyond the call, so the value \
             cannot borrow; return an owned value (or an `Arc`), or drop `near_ttl`",
        ));
    }
    if let ReturnType::Default = sig.output {
        errors.push(syn::Error::new_spanned(
            &sig.ident,
            "#[distcached] functions must return `Result<T, E>`, with `T: Serialize + DeserializeOwned` and `E: From<distcache::Error>`",
        ));
    }
    errors.finish()
}

/// The span of a reference (`&`) or a lifetime anywhere in a type, or of `impl Trait`: what
/// makes an argument borrow from its caller; `'static` does not. (An elided lifetime in a path,
/// as in `Cow<str>`, cannot be seen here; the compiler reports it at the function's return
/// type.)
fn borrowed(tokens: TokenStream) -> Option<Span> {
    let mut tokens = tokens.into_iter().peekable();
    while let Some(token) = tokens.next() {
        let found = match token {
            TokenTree::Punct(punct) if punct.as_char() == '&' => {
                // `&'static T` is not a borrow from the caller.
                let mut ahead = tokens.clone();
                let is_static = matches!(ahead.next(), Some(TokenTree::Punct(p)) if p.as_char() == '\'')
                    && matches!(ahead.next(), Some(TokenTree::Ident(i)) if i == "static");
                (!is_static).then(|| punct.span())
            }
            TokenTree::Punct(punct) if punct.as_char() == '\'' => match tokens.peek() {
                Some(TokenTree::Ident(ident)) if ident == "static" => None,
                _ => Some(punct.span()),
            },
            TokenTree::Ident(ident) if ident == "impl" => Some(ident.span()),
            TokenTree::Group(group) => borrowed(group.stream()),
            _ => None,
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

/// The span of an `impl` keyword anywhere in a type.
fn impl_trait(tokens: TokenStream) -> Option<Span> {
    tokens.into_iter().find_map(|token| match token {
        TokenTree::Ident(ident) if ident == "impl" => Some(ident.span()),
        TokenTree::Group(group) => impl_trait(group.stream()),
        _ => None,
    })
}

fn expand(args: Args, mut function: ItemFn) -> TokenStream {
    let fn_name = function.sig.ident.to_string();
    let receiver = function.sig.inputs.iter().find_map(|input| match input {
        FnArg::Receiver(receiver) => Some(receiver.clone()),
        FnArg::Typed(_) => None,
    });
    // The key's function part: `name`; or, for a method, its type's path (`type_name`, which
    // names the module too) and its name; or the module's path and the function's name.
    let label = match &args.name {
        Some(name) => quote!(#name),
        None => quote!(::core::concat!(::core::module_path!(), "::", #fn_name)),
    };
    let new_key = match (&args.name, &receiver) {
        (None, Some(_)) => quote! {
            ::distcache::__private::Key::method(::core::any::type_name::<Self>(), #fn_name)
        },
        _ => quote!(::distcache::__private::Key::new(#label)),
    };
    let cache = match &args.cache {
        Some(expr) => quote_spanned!(expr.span()=> ::distcache::__private::user_cache(&(#expr))),
        None => quote!(::distcache::__private::default_cache()),
    };
    let ReturnType::Type(_, return_type) = &function.sig.output else {
        unreachable!("checked: the function returns a type")
    };
    let return_type = return_type.clone();
    let skipped = |ident: &syn::Ident| {
        args.skip
            .as_ref()
            .is_some_and(|(_, names)| names.iter().any(|n| n == ident))
    };

    // Arguments bound by a plain name keep it; others (destructuring patterns) are passed as
    // `__distcache_argN` and destructured inside, as the body expects.
    let mut key_args = Vec::new();
    let mut destructure = Vec::new();
    // The parameters of `<fn>_key` and `<fn>_invalidate`: what the key is made of.
    let mut key_params = Vec::new();
    for (i, input) in function.sig.inputs.iter_mut().enumerate() {
        let FnArg::Typed(arg) = input else {
            continue;
        };
        let ident = match &*arg.pat {
            Pat::Ident(binding) if binding.by_ref.is_none() && binding.subpat.is_none() => {
                binding.ident.clone()
            }
            _ => {
                let ident = format_ident!("__distcache_arg{}", i);
                let pat = std::mem::replace(&mut *arg.pat, syn::parse_quote!(#ident));
                destructure.push(quote!(let #pat = #ident;));
                ident
            }
        };
        if args.key.is_none() && skipped(&ident) {
            continue;
        }
        let ty = &arg.ty;
        key_params.push(quote!(#ident: #ty));
        if args.key.is_none() {
            // Spanned at the type: a missing `Serialize` is reported there.
            key_args.push(quote_spanned! {arg.ty.span()=>
                __distcache_key.arg(&#ident);
            });
        }
    }
    // `key = (a, b)` keys as arguments `a` and `b` would, each borrowed where it is (a place
    // such as `self.name` is not moved); `key = x` as one argument `x`; `key = ()` as none,
    // one entry for every call. Decided by the syntax, so no two values share a key.
    let key_parts: Vec<&Expr> = match &args.key {
        Some(Expr::Tuple(tuple)) => tuple.elems.iter().collect(),
        Some(expr) => vec![expr],
        None => Vec::new(),
    };
    for part in key_parts {
        key_args.push(quote_spanned! {part.span()=>
            __distcache_key.arg(&(#part));
        });
    }
    // `<fn>_key` is a method when the key reads `self` (through `key`), and an associated
    // function when `self` is skipped.
    let key_receiver = match (&receiver, &args.key) {
        (Some(receiver), Some(_)) => Some(quote!(#receiver,)),
        _ => None,
    };
    // `return` and `?` in the body must infer against the declared type, not whatever the async
    // block's first `return` suggests: an unreachable `return` of that type pins it.
    let fake_return = quote_spanned! {return_type.span()=>
        #[allow(
            unknown_lints,
            unreachable_code,
            clippy::diverging_sub_expression,
            clippy::empty_loop,
            clippy::let_unit_value,
            clippy::needless_return,
            clippy::unreachable
        )]
        if false {
            let __distcache_fake_return: #return_type = loop {};
            return __distcache_fake_return;
        }
    };
    let (exec_limit, expire) = (duration(args.exec_limit), duration(args.expire));
    let per_function = &args.options;
    // The function's settings, built once, at compile time.
    let (options_type, call_fn) = match args.soft_timeout {
        Some(_) => (
            quote!(::distcache::GetOptions<::distcache::Detached>),
            quote!(call_detached),
        ),
        None => (quote!(::distcache::GetOptions), quote!(call)),
    };
    let options = quote! {
        static __DISTCACHE_OPTIONS: #options_type =
            ::distcache::GetOptions::new(#exec_limit, #expire) #(#per_function)*;
    };
    // Whether values are kept near: with `near_ttl`, the value type must allow it (an error
    // spanned at `near_ttl`); without it, they are not, and the call compiles to none of it.
    let near = match args.near_ttl {
        Some(span) => quote_spanned!(span=> ::distcache::__private::keep_near()),
        // Spanned at the return type, as the call is: a type that is not a cacheable `Result`
        // is reported there once, not again for this argument.
        None => quote_spanned!(return_type.span()=> ::distcache::__private::NoNear),
    };
    let block = &function.block;
    // The call is spanned at the return type: a type that is not a cacheable `Result` is
    // reported there, once.
    let call = quote_spanned! {return_type.span()=>
        ::distcache::__private::#call_fn::<#return_type, _, _, _>(
            #cache,
            #label,
            __distcache_key,
            &__DISTCACHE_OPTIONS,
            #near,
            move || async move {
                #(#destructure)*
                #fake_return
                #block
            },
        )
        .await
    };
    let body = quote! {
        {
            #options
            let mut __distcache_key = #new_key;
            #(#key_args)*
            #call
        }
    };
    function.block = Box::new(syn::parse2(body).expect("the expansion is a block"));

    if !args.helpers {
        return function.into_token_stream();
    }
    let vis = &function.vis;
    let generics = &function.sig.generics;
    // `<fn>_invalidate` takes what the call takes (the cache expression may read any of it);
    // `<fn>_key` only what the key is made of.
    let call_params = &function.sig.inputs;
    // A `#[cfg]` on the function holds for its helpers too.
    let cfgs: Vec<&syn::Attribute> = function
        .attrs
        .iter()
        .filter(|attr| attr.path().is_ident("cfg"))
        .collect();
    let key_fn = format_ident!("{}_key", function.sig.ident);
    let invalidate_fn = format_ident!("{}_invalidate", function.sig.ident);
    let key_doc = format!(
        "The cache key of `{fn_name}`'s entry for these arguments (`None` when they cannot be \
         serialized into one: such calls run uncached). Generated by `#[distcached]`."
    );
    let invalidate_doc = format!(
        "Removes `{fn_name}`'s entry for these arguments, so that the next call computes it \
         again; as `Cache::invalidate` with its key. Generated by `#[distcached]`."
    );
    let helpers = quote! {
        #(#cfgs)*
        #[doc = #key_doc]
        #[allow(dead_code, unused_variables, clippy::needless_pass_by_value)]
        #vis fn #key_fn #generics (#key_receiver #(#key_params),*)
            -> ::core::option::Option<::std::string::String>
        {
            let mut __distcache_key = #new_key;
            #(#key_args)*
            __distcache_key.into_key()
        }

        #(#cfgs)*
        #[doc = #invalidate_doc]
        #[allow(dead_code, unused_variables, unused_mut, clippy::needless_pass_by_value)]
        #vis async fn #invalidate_fn #generics (#call_params)
            -> ::core::result::Result<(), ::distcache::Error>
        {
            let mut __distcache_key = #new_key;
            #(#key_args)*
            match __distcache_key.into_key() {
                ::core::option::Option::Some(key) => (#cache)?.invalidate(&key).await,
                ::core::option::Option::None => ::core::result::Result::Ok(()),
            }
        }
    };
    let mut out = function.into_token_stream();
    out.extend(helpers);
    out
}

fn duration(d: Duration) -> TokenStream {
    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
    quote!(::core::time::Duration::new(#secs, #nanos))
}
