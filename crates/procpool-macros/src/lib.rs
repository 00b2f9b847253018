//! The `#[procpool::task]` and `#[procpool::main]` attributes.
//!
//! `#[task]` keeps the function as written, registers it for worker processes at build
//! time (a `linkme` distributed slice owned by `procpool-worker`), and adds a module of
//! the same name whose `task(..)` builds a typed `procpool::Task` (owned by
//! `procpool-core`). `#[main]` makes a binary enter worker mode before its own `main`
//! runs. Generated code names only `::procpool::…`, so this crate depends on no workspace
//! crate; use it through the `procpool` facade.
//!
//! ```ignore
//! #[procpool::task]
//! fn add(a: i64, b: i64) -> i64 { a + b }
//!
//! // add(1, 2) is still the plain function; add::task(1, 2) is a procpool::Task<i64>.
//! ```
#![deny(missing_docs)]

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::{
    FnArg, GenericArgument, ItemFn, Pat, PathArguments, ReturnType, Type, parse_macro_input,
};

/// Registers a function as a procpool task and adds its typed handle module.
///
/// The function may be `async`, must take owned, serde-compatible parameters (simple
/// names, no patterns) and return a serde-compatible `T` or a `Result<T, E>` with
/// `E: Display` (its `Err` becomes a `user_error` carrying `E`'s type name and text).
#[proc_macro_attribute]
pub fn task(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            TokenStream2::from(attr).span(),
            "#[procpool::task] takes no arguments",
        )
        .to_compile_error()
        .into();
    }
    let func = parse_macro_input!(item as ItemFn);
    match expand_task(&func) {
        Ok(tokens) => tokens.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand_task(func: &ItemFn) -> syn::Result<TokenStream2> {
    let sig = &func.sig;
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(syn::Error::new(
            sig.generics.span(),
            "task functions cannot be generic: the worker must know the concrete types",
        ));
    }
    let mut names = Vec::new();
    let mut types = Vec::new();
    for input in &sig.inputs {
        let FnArg::Typed(pat_ty) = input else {
            return Err(syn::Error::new(
                input.span(),
                "task functions cannot take self",
            ));
        };
        let Pat::Ident(ident) = &*pat_ty.pat else {
            return Err(syn::Error::new(
                pat_ty.pat.span(),
                "task parameters must be plain names",
            ));
        };
        if matches!(&*pat_ty.ty, Type::Reference(_)) {
            return Err(syn::Error::new(
                pat_ty.ty.span(),
                "task parameters must be owned types: they are decoded in the worker",
            ));
        }
        names.push(ident.ident.clone());
        types.push((*pat_ty.ty).clone());
    }
    let (ok_ty, fallible) = match &sig.output {
        ReturnType::Default => (syn::parse_quote!(()), false),
        ReturnType::Type(_, ty) => match result_ok_type(ty) {
            Some(ok) => (ok, true),
            None => ((**ty).clone(), false),
        },
    };

    let fn_name = &sig.ident;
    let vis = &func.vis;
    let name_str = fn_name.to_string();
    let is_async = sig.asyncness.is_some();
    let arity = names.len();
    let static_name = format_ident!("__PROCPOOL_TASK_{}", name_str.to_uppercase());
    let type_strs: Vec<String> = types.iter().map(type_string).collect();
    let name_strs: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let ok_str = type_string(&ok_ty);

    let invoke = if is_async {
        quote! { ::procpool::__private::block_on(#fn_name(#(#names),*)) }
    } else {
        quote! { #fn_name(#(#names),*) }
    };
    let finish = if fallible {
        quote! {
            match __out {
                ::core::result::Result::Ok(__v) => ::procpool::__private::encode_result(__enc, &__v),
                ::core::result::Result::Err(__e) => ::core::result::Result::Err(::procpool::__private::user_error(&__e)),
            }
        }
    } else {
        quote! { ::procpool::__private::encode_result(__enc, &__out) }
    };
    let handle_doc = format!(
        "Typed procpool handle of [`{name_str}`](fn@{name_str}): `{name_str}::task(..)` builds a \
         `procpool::Task<{ok_str}>` that runs it in a worker process."
    );

    Ok(quote! {
        #func

        #[doc = #handle_doc]
        #vis mod #fn_name {
            #[allow(unused_imports)]
            use super::*;

            /// The name this task is registered under.
            pub const NAME: &str = #name_str;

            /// Builds a task running this function with these arguments in a worker.
            pub fn task(#(#names: #types),*) -> ::procpool::Task<#ok_ty> {
                ::procpool::Task::__from_args(NAME, &(#(#names,)*))
            }
        }

        #[::procpool::__private::linkme::distributed_slice(::procpool::__private::TASKS)]
        #[linkme(crate = ::procpool::__private::linkme)]
        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        static #static_name: ::procpool::__private::TaskEntry = {
            fn __call(
                __args: &[u8],
                __enc: ::procpool::__private::Encoding,
            ) -> ::core::result::Result<::std::vec::Vec<u8>, ::procpool::__private::TaskFailure> {
                let (#(#names,)*): (#(#types,)*) =
                    ::procpool::__private::decode_args(__enc, __args, #arity)?;
                let __out = #invoke;
                #finish
            }
            ::procpool::__private::TaskEntry {
                name: #name_str,
                params: &[#((#name_strs, #type_strs)),*],
                result: #ok_str,
                fallible: #fallible,
                is_async: #is_async,
                call: __call,
            }
        };
    })
}

/// `Result<T, E>` or an alias `Result<T>` (anyhow, io): the `Ok` type.
fn result_ok_type(ty: &Type) -> Option<Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(ok) => Some(ok.clone()),
        _ => None,
    }
}

fn type_string(ty: &Type) -> String {
    // `quote` puts a space between every token; write the type the way people do.
    let mut out = quote!(#ty).to_string();
    for (spaced, tight) in [
        (" :: ", "::"),
        (":: ", "::"),
        (" < ", "<"),
        ("< ", "<"),
        (" >", ">"),
        (" ,", ","),
        ("( ", "("),
        (" )", ")"),
        ("[ ", "["),
        (" ]", "]"),
        (" ;", ";"),
        ("& ", "&"),
    ] {
        out = out.replace(spaced, tight);
    }
    out
}

/// Makes `main` enter worker mode first: in a process started by a procpool supervisor the
/// original `main` never runs. Works above other attributes such as `#[tokio::main]`, which
/// then only wraps the application's own `main`.
#[proc_macro_attribute]
pub fn main(attr: TokenStream, item: TokenStream) -> TokenStream {
    if !attr.is_empty() {
        return syn::Error::new(
            TokenStream2::from(attr).span(),
            "#[procpool::main] takes no arguments",
        )
        .to_compile_error()
        .into();
    }
    let mut func = parse_macro_input!(item as ItemFn);
    let output = func.sig.output.clone();
    func.sig.ident = format_ident!("__procpool_app_main");
    quote! {
        fn main() #output {
            ::procpool::init();
            #func
            __procpool_app_main()
        }
    }
    .into()
}
