//! Parse, check, expand: three plain steps. On any error the function is emitted unchanged,
//! beside the errors, so that the user sees those errors and not a cascade from a broken item.

use std::time::Duration;

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, GenericParam, ItemFn, Pat, ReturnType};

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
    let checked = check(&function);
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
fn check(function: &ItemFn) -> syn::Result<()> {
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
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => errors.push(syn::Error::new_spanned(
                receiver,
                "#[distcached] cannot take `self`: the receiver is not part of the key; \
                 pass what identifies the value as arguments of a free function",
            )),
            FnArg::Typed(arg) => {
                if let Some(span) = impl_trait(arg.ty.to_token_stream()) {
                    errors.push(syn::Error::new(
                        span,
                        "#[distcached] arguments cannot be `impl Trait`: the key needs one concrete, serializable type",
                    ));
                }
            }
        }
    }
    if let ReturnType::Default = sig.output {
        errors.push(syn::Error::new_spanned(
            &sig.ident,
            "#[distcached] functions must return `Result<T, E>`, with `T: Serialize + DeserializeOwned` and `E: From<distcache::Error>`",
        ));
    }
    errors.finish()
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
    let path = match &args.name {
        Some(name) => quote!(#name),
        None => quote!(::core::concat!(::core::module_path!(), "::", #fn_name)),
    };
    let cache = match &args.cache {
        Some(expr) => quote_spanned!(expr.span()=> ::distcache::__private::user_cache(&(#expr))),
        None => quote!(::distcache::__private::default_cache()),
    };
    let ReturnType::Type(_, return_type) = &function.sig.output else {
        unreachable!("checked: the function returns a type")
    };
    let return_type = return_type.clone();

    // Arguments bound by a plain name keep it; others (destructuring patterns) are passed as
    // `__distcache_argN` and destructured inside, as the body expects.
    let mut key_args = Vec::new();
    let mut destructure = Vec::new();
    for (i, input) in function.sig.inputs.iter_mut().enumerate() {
        let FnArg::Typed(arg) = input else {
            unreachable!("checked: no receiver")
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
        // Spanned at the type: a missing `Serialize` is reported there.
        key_args.push(quote_spanned! {arg.ty.span()=>
            __distcache_key.arg(&#ident);
        });
    }
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
    let block = &function.block;
    // The call is spanned at the return type: a type that is not a cacheable `Result` is
    // reported there, once.
    let call = quote_spanned! {return_type.span()=>
        ::distcache::__private::call::<#return_type, _, _>(
            #cache,
            #path,
            __distcache_key,
            #exec_limit,
            #expire,
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
            let mut __distcache_key = ::distcache::__private::Key::new(#path);
            #(#key_args)*
            #call
        }
    };
    function.block = Box::new(syn::parse2(body).expect("the expansion is a block"));
    function.into_token_stream()
}

fn duration(d: Duration) -> TokenStream {
    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
    quote!(::core::time::Duration::new(#secs, #nanos))
}
