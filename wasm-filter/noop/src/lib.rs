//! Does nothing on every callback a meshtune filter uses, so a benchmark can
//! separate the cost of running a wasm filter at all from meshtune's own.
//!
//! Its plugin configuration may be a number N: then each request makes N
//! clock reads, the cheapest host call there is (no data back into the VM),
//! so `bench filter` can price one crossing between the VM and Envoy. Or it
//! may be `read`: then each request reads one request header (`:path`) and
//! the response's `:status` and nothing else — the least any filter that
//! attributes requests and counts errors must ask of Envoy.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, MapType, Status};
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
    fn proxy_get_header_map_value(
        map_type: MapType,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;
}

/// Runs a host call that answers with a buffer and takes the buffer.
fn host_buffer(call: impl FnOnce(*mut *mut u8, *mut usize) -> Status) -> Vec<u8> {
    let (mut ptr, mut size) = (null_mut(), 0usize);
    match call(&mut ptr, &mut size) {
        // SAFETY: on Ok the host allocated the buffer through the VM's
        // allocator; it is ours from here on.
        Status::Ok if !ptr.is_null() => unsafe { Vec::from_raw_parts(ptr, size, size) },
        _ => Vec::new(),
    }
}

/// Reads one header value and drops it; its length, so the read is used.
fn header_len(map: MapType, key: &str) -> usize {
    // SAFETY: a valid key slice and out-pointers.
    host_buffer(|p, n| unsafe { proxy_get_header_map_value(map, key.as_ptr(), key.len(), p, n) })
        .len()
}

fn plugin_configuration() -> Vec<u8> {
    // SAFETY: valid out-pointers.
    host_buffer(|p, n| unsafe {
        proxy_get_buffer_bytes(BufferType::PluginConfiguration, 0, usize::MAX, p, n)
    })
}

#[derive(Clone, Copy, Default)]
struct Work {
    clock_reads: u32,
    read_headers: bool,
}

struct Root {
    work: Work,
}
struct Stream {
    work: Work,
    seen: usize,
}

impl Context for Root {}
impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let config = plugin_configuration();
        let text = std::str::from_utf8(&config).unwrap_or("").trim();
        self.work = Work {
            clock_reads: text.parse().unwrap_or(0),
            read_headers: text == "read",
        };
        true
    }
    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            work: self.work,
            seen: 0,
        }))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Context for Stream {}
impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _n: usize, _eos: bool) -> Action {
        for _ in 0..self.work.clock_reads {
            let mut t = 0u64;
            // SAFETY: a valid out-pointer.
            let _ = unsafe { proxy_get_current_time_nanoseconds(&mut t) };
        }
        if self.work.read_headers {
            self.seen += header_len(MapType::HttpRequestHeaders, ":path");
        }
        Action::Continue
    }
    fn on_http_response_headers(&mut self, _n: usize, _eos: bool) -> Action {
        if self.work.read_headers {
            self.seen += header_len(MapType::HttpResponseHeaders, ":status");
        }
        Action::Continue
    }
    fn on_http_response_body(&mut self, _n: usize, _eos: bool) -> Action {
        Action::Continue
    }
    fn on_log(&mut self) {}
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { work: Work::default() }) });
}}
