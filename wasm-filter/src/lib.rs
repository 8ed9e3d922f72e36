//! The meshtune proxy-wasm filter. Everything that decides lives in
//! `meshtune-filter-core`; this crate only moves data between Envoy and it.
//! It fails open: a bad configuration, an unreachable agent or a host call
//! that fails leaves requests untouched.

mod host;
mod http;
mod metrics;
mod root;
mod shared;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    std::panic::set_hook(Box::new(|info| {
        host::log(LogLevel::Critical, &format!("meshtune: panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(root::Root::new()) });
}}
