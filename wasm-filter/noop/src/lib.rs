//! Does nothing on every callback a meshtune filter uses, so a benchmark can
//! separate the cost of running a wasm filter at all from meshtune's own.
//!
//! Its plugin configuration may be a number N: then each request makes N
//! clock reads, the cheapest host call there is (no data back into the VM),
//! so `bench filter` can price one crossing between the VM and Envoy.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, Status};
use std::ptr::null_mut;

// The SDK's wrappers panic on an unexpected status; these answer it.
#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> Status;
    fn proxy_get_buffer_bytes(
        buffer_type: BufferType,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> Status;
}

fn plugin_configuration() -> Vec<u8> {
    let (mut ptr, mut size) = (null_mut(), 0usize);
    // SAFETY: the host answers with a buffer it allocated through the VM's
    // allocator, owned by us from here on.
    match unsafe {
        proxy_get_buffer_bytes(
            BufferType::PluginConfiguration,
            0,
            usize::MAX,
            &mut ptr,
            &mut size,
        )
    } {
        Status::Ok if !ptr.is_null() => unsafe { Vec::from_raw_parts(ptr, size, size) },
        _ => Vec::new(),
    }
}

struct Root {
    clock_reads: u32,
}
struct Stream {
    clock_reads: u32,
}

impl Context for Root {}
impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        self.clock_reads = std::str::from_utf8(&plugin_configuration())
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        true
    }
    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            clock_reads: self.clock_reads,
        }))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Context for Stream {}
impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        for _ in 0..self.clock_reads {
            let mut t = 0u64;
            // SAFETY: a valid out-pointer.
            let _ = unsafe { proxy_get_current_time_nanoseconds(&mut t) };
        }
        Action::Continue
    }
    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        Action::Continue
    }
    fn on_http_response_body(&mut self, _n: usize, _eos: bool) -> Action {
        Action::Continue
    }
    fn on_log(&mut self) {}
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { clock_reads: 0 }) });
}}
