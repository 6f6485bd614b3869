//! The root context: reads and checks the configuration once, then runs the VM's timer
//! (metadata fetches, paused requests), sends the refreshes requests won (its calls outlive any
//! request), and hands the VM to every request.

use super::host::{self, HostRandom};
use super::http::{BffHttp, Unconfigured};
use super::vm::VmHandle;
use crate::config::Config;
use crate::random;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType, LogLevel};
use std::rc::Rc;
use std::time::Duration;

/// How often the timer runs: the granularity of waits and of picking up shared data.
const TICK: Duration = Duration::from_millis(100);

#[derive(Default)]
pub struct BffRoot {
    vm: Option<VmHandle>,
}

impl Context for BffRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if let Some(vm) = &self.vm {
            vm.deliver(token_id, num_headers, body_size);
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
        match Config::parse(&bytes, &env) {
            Ok(config) => {
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
                let vm = VmHandle::new(Rc::new(config));
                vm.prepare_shared();
                vm.define_counters();
                vm.set_queue(register_own_queue(&vm.namespace()));
                self.vm = Some(vm);
                host::set_tick_period(TICK);
                true
            }
            Err(errors) => {
                // Returning false makes Envoy reject the filter; this line says why.
                host::log(LogLevel::Critical, &errors.to_string());
                self.vm = None;
                false
            }
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        host::drain(queue_id);
        if let Some(vm) = &self.vm {
            vm.send_refreshes();
        }
    }

    fn on_tick(&mut self) {
        if let Some(vm) = &self.vm {
            vm.tick();
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        // The SDK panics on None, so an unconfigured plugin still gets a context: one that
        // fails closed.
        Some(match &self.vm {
            Some(vm) => Box::new(BffHttp::new(context_id, vm.clone())),
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
