//! The proxy-wasm shell: the only code that talks to Envoy. It reads Envoy's inputs, hands
//! them to the engine (`crate::engine`) and carries out what the engine returns; it decides
//! nothing.

mod host;
mod http;
mod root;
mod shell;

proxy_wasm::main! {{
    // Also installs a panic hook that logs the panic before the VM dies.
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::BffRoot::default())
    });
}}
