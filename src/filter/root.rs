//! The root context: reads and checks the configuration once, creates the VM's engine, and
//! feeds it the timer, the queue's nudges and the IdP answers that come to the root (its
//! calls outlive any request).

use super::host::{self, HostRandom, HostStore, WasmHost};
use super::http::{BffHttp, Unconfigured};
use super::shell::Shell;
use crate::config::Config;
use crate::engine::{self, Engine};
use crate::metrics::Counter;
use crate::random;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel};
use std::rc::Rc;

#[derive(Default)]
pub struct BffRoot {
    shell: Option<Rc<Shell>>,
}

impl Context for BffRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let Some(shell) = &self.shell {
            shell.call_answered(token_id, host::call_answer(num_headers, body_size));
        }
    }
}

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
        let config = match Config::parse(&bytes, &env) {
            Ok(config) => config,
            Err(errors) => {
                // Returning false makes Envoy reject the filter; this line says why.
                host::log(LogLevel::Critical, &errors.to_string());
                self.shell = None;
                return false;
            }
        };
        host::log(
            LogLevel::Info,
            &format!(
                "bff: configured for issuer {} (prefix {}, {} cookie key(s), discovery {})",
                config.issuer,
                config.prefix,
                config.keys.len(),
                if config.discovery { "on" } else { "off" },
            ),
        );
        let counters: Vec<Option<u32>> = Counter::ALL
            .iter()
            .map(|c| host::define_counter(&format!("{}.{}", config.metrics_prefix, c.name())))
            .collect();
        let mut wasm_host = WasmHost {
            counters: &counters,
            queue: None,
            rng: HostRandom,
            store: HostStore,
        };
        let engine = Engine::new(config, &mut wasm_host);
        let queue = register_own_queue(engine.namespace());
        self.shell = Some(Rc::new(Shell::new(engine, counters, queue)));
        host::set_tick_period(engine::TICK);
        true
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        host::drain(queue_id);
        if let Some(shell) = &self.shell {
            shell.run(None, |engine, host| engine.on_queue_nudged(host));
        }
    }

    fn on_tick(&mut self) {
        if let Some(shell) = &self.shell {
            shell.run(None, |engine, host| engine.on_tick(host));
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // The SDK panics on None, so an unconfigured plugin still gets a context: one that
        // fails closed.
        Some(match &self.shell {
            Some(shell) => Box::new(BffHttp::new(context_id, Rc::clone(shell))),
            None => Box::new(Unconfigured),
        })
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// This VM's own queue (named at random: every worker's VM registers one, and a name taken
/// twice would nudge only the last). `None` when the host refuses: the tick then sends.
fn register_own_queue(namespace: &str) -> Option<u32> {
    let suffix = random::token(&mut HostRandom, 12).ok()?;
    host::register_queue(&format!("{namespace}.refresh.{suffix}"))
}
