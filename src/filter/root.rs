//! The root context: reads and checks the configuration once, then hands it to every request.

use super::host;
use super::http::{BffHttp, Unconfigured};
use crate::config::Config;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel};
use std::rc::Rc;

#[derive(Default)]
pub struct BffRoot {
    config: Option<Rc<Config>>,
}

impl Context for BffRoot {}

impl RootContext for BffRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let bytes = hostcalls::get_buffer(
            BufferType::PluginConfiguration,
            0,
            plugin_configuration_size,
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        // Secrets come from the VM's environment (vm_config.environment_variables).
        let env = |name: &str| std::env::var(name).ok();
        match Config::parse(&bytes, &env) {
            Ok(config) => {
                host::log(
                    LogLevel::Info,
                    &format!(
                        "bff: configured for issuer {} (prefix {}, {} cookie key(s))",
                        config.issuer,
                        config.prefix,
                        config.keys.len()
                    ),
                );
                self.config = Some(Rc::new(config));
                true
            }
            Err(errors) => {
                // Returning false makes Envoy reject the filter; this line says why.
                host::log(LogLevel::Critical, &errors.to_string());
                self.config = None;
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // The SDK panics on None, so an unconfigured plugin still gets a context: one that
        // fails closed.
        Some(match &self.config {
            Some(config) => Box::new(BffHttp::new(Rc::clone(config))),
            None => Box::new(Unconfigured),
        })
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
