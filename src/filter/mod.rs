//! The proxy-wasm shell: the only code that talks to Envoy. It turns host calls into the
//! pure functions' inputs and carries out their decisions.

mod host;
mod http;
mod root;
mod stream;
mod vm;

proxy_wasm::main! {{
    // Also installs a panic hook that logs the panic before the VM dies.
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::BffRoot::default())
    });
}}
