//! The host calls the filter makes, without panics.
//!
//! The proxy-wasm SDK's helpers panic on any status they do not expect (and
//! on a header value that is not UTF-8), which would trap the VM and, without
//! `fail_open`, fail requests. These wrappers call the same ABI functions and
//! turn every unexpected answer into `None`/`false`.

use proxy_wasm::types::{BufferType, LogLevel, MapType, MetricType, Status, StreamType};
use std::ptr::null_mut;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: LogLevel, data: *const u8, size: usize) -> Status;
    fn proxy_get_current_time_nanoseconds(out: *mut u64) -> Status;
    fn proxy_get_header_map_value(
        map: MapType,
        key: *const u8,
        key_size: usize,
        out: *mut *mut u8,
        out_size: *mut usize,
    ) -> Status;
    fn proxy_get_header_map_pairs(map: MapType, out: *mut *mut u8, out_size: *mut usize) -> Status;
    fn proxy_replace_header_map_value(
        map: MapType,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> Status;
    fn proxy_add_header_map_value(
        map: MapType,
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
    ) -> Status;
    fn proxy_get_property(
        path: *const u8,
        path_size: usize,
        out: *mut *mut u8,
        out_size: *mut usize,
    ) -> Status;
    fn proxy_get_buffer_bytes(
        buffer: BufferType,
        start: usize,
        max: usize,
        out: *mut *mut u8,
        out_size: *mut usize,
    ) -> Status;
    fn proxy_send_local_response(
        status_code: u32,
        details: *const u8,
        details_size: usize,
        body: *const u8,
        body_size: usize,
        headers: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> Status;
    fn proxy_define_metric(
        kind: MetricType,
        name: *const u8,
        name_size: usize,
        out: *mut u32,
    ) -> Status;
    fn proxy_increment_metric(id: u32, offset: i64) -> Status;
    fn proxy_get_shared_data(
        key: *const u8,
        key_size: usize,
        out: *mut *mut u8,
        out_size: *mut usize,
        cas: *mut u32,
    ) -> Status;
    fn proxy_set_shared_data(
        key: *const u8,
        key_size: usize,
        value: *const u8,
        value_size: usize,
        cas: u32,
    ) -> Status;
    fn proxy_record_metric(id: u32, value: u64) -> Status;
    fn proxy_set_effective_context(context_id: u32) -> Status;
    fn proxy_continue_stream(stream_type: StreamType) -> Status;
}

/// Takes ownership of bytes the host allocated with `proxy_on_memory_allocate`.
///
/// # Safety
/// `ptr` must come from the host's answer of size `size`, or be null.
unsafe fn take(ptr: *mut u8, size: usize) -> Option<Vec<u8>> {
    if ptr.is_null() {
        return Some(Vec::new());
    }
    // SAFETY: the SDK's allocator hands the host a `Vec<u8>` of capacity
    // `size` that it forgot; the host filled it and passed it back to us.
    Some(unsafe { Vec::from_raw_parts(ptr, size, size) })
}

pub fn log(level: LogLevel, msg: &str) {
    // SAFETY: pointer and length of a live str.
    let _ = unsafe { proxy_log(level, msg.as_ptr(), msg.len()) };
}

pub fn now_ns() -> u64 {
    let mut t = 0u64;
    // SAFETY: the host writes one u64.
    match unsafe { proxy_get_current_time_nanoseconds(&mut t) } {
        Status::Ok => t,
        _ => 0,
    }
}

pub fn header(map: MapType, key: &str) -> Option<Vec<u8>> {
    let (mut ptr, mut size) = (null_mut(), 0usize);
    // SAFETY: valid key slice; the host answers with an owned buffer.
    match unsafe { proxy_get_header_map_value(map, key.as_ptr(), key.len(), &mut ptr, &mut size) } {
        Status::Ok => unsafe { take(ptr, size) },
        _ => None,
    }
}

/// All headers of `map` in one host call, serialized as the ABI defines:
/// a u32 count, then (key length, value length) u32 pairs, then each key and
/// value followed by a NUL byte.
pub fn header_pairs(map: MapType) -> Option<Vec<u8>> {
    let (mut ptr, mut size) = (null_mut(), 0usize);
    // SAFETY: the host answers with an owned buffer.
    match unsafe { proxy_get_header_map_pairs(map, &mut ptr, &mut size) } {
        Status::Ok => unsafe { take(ptr, size) },
        _ => None,
    }
}

pub fn header_str(map: MapType, key: &str) -> Option<String> {
    header(map, key).and_then(|b| String::from_utf8(b).ok())
}

pub fn set_header(map: MapType, key: &str, value: &str) -> bool {
    // SAFETY: valid slices.
    matches!(
        unsafe {
            proxy_replace_header_map_value(
                map,
                key.as_ptr(),
                key.len(),
                value.as_ptr(),
                value.len(),
            )
        },
        Status::Ok
    )
}

/// Adds a header known to be absent: cheaper for Envoy than a replace,
/// which first searches the map for the key and removes it.
pub fn add_header(map: MapType, key: &str, value: &str) -> bool {
    // SAFETY: valid slices.
    matches!(
        unsafe {
            proxy_add_header_map_value(map, key.as_ptr(), key.len(), value.as_ptr(), value.len())
        },
        Status::Ok
    )
}

pub fn property(path: &[&str]) -> Option<Vec<u8>> {
    let serialized = path.join("\0");
    let (mut ptr, mut size) = (null_mut(), 0usize);
    // SAFETY: valid path slice; the host answers with an owned buffer.
    match unsafe { proxy_get_property(serialized.as_ptr(), serialized.len(), &mut ptr, &mut size) }
    {
        Status::Ok if !ptr.is_null() => unsafe { take(ptr, size) },
        _ => None,
    }
}

pub fn property_str(path: &[&str]) -> Option<String> {
    property(path)
        .and_then(|b| String::from_utf8(b).ok())
        .filter(|s| !s.is_empty())
}

/// An integer property (Envoy encodes them as 8 little-endian bytes).
pub fn property_i64(path: &[&str]) -> Option<i64> {
    let bytes = property(path)?;
    let arr: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(i64::from_le_bytes(arr))
}

pub fn plugin_configuration() -> Vec<u8> {
    let (mut ptr, mut size) = (null_mut(), 0usize);
    // SAFETY: the host answers with an owned buffer.
    match unsafe {
        proxy_get_buffer_bytes(
            BufferType::PluginConfiguration,
            0,
            usize::MAX,
            &mut ptr,
            &mut size,
        )
    } {
        Status::Ok => unsafe { take(ptr, size) }.unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Answers the stream locally; `details` shows in Envoy's
/// `%RESPONSE_CODE_DETAILS%`.
pub fn send_local_response(
    status: u32,
    details: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> bool {
    let map = meshtune_filter_core::abi::serialize_pairs(headers);
    // SAFETY: valid slices for the duration of the call.
    matches!(
        unsafe {
            proxy_send_local_response(
                status,
                details.as_ptr(),
                details.len(),
                body.as_ptr(),
                body.len(),
                map.as_ptr(),
                map.len(),
                -1,
            )
        },
        Status::Ok
    )
}

/// A value of the proxy's shared data (seen by every VM of the plugin's
/// code), `None` when absent or unreadable.
pub fn shared_data(key: &str) -> Option<Vec<u8>> {
    let (mut ptr, mut size, mut cas) = (null_mut(), 0usize, 0u32);
    // SAFETY: valid key slice; the host answers with an owned buffer.
    match unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut ptr, &mut size, &mut cas) } {
        Status::Ok => unsafe { take(ptr, size) },
        _ => None,
    }
}

/// Sets a value of the proxy's shared data unconditionally (cas 0).
pub fn set_shared_data(key: &str, value: &[u8]) -> bool {
    // SAFETY: valid slices.
    matches!(
        unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), 0) },
        Status::Ok
    )
}

/// The body of an HTTP call's response (`len` bytes as the callback says, at most 1 MiB).
pub fn http_call_response_body(len: usize) -> Vec<u8> {
    let (mut ptr, mut size) = (null_mut(), 0usize);
    // SAFETY: the host answers with an owned buffer.
    match unsafe {
        proxy_get_buffer_bytes(
            BufferType::HttpCallResponseBody,
            0,
            len.min(1 << 20),
            &mut ptr,
            &mut size,
        )
    } {
        Status::Ok => unsafe { take(ptr, size) }.unwrap_or_default(),
        _ => Vec::new(),
    }
}

pub fn define_metric(kind: MetricType, name: &str) -> Option<u32> {
    let mut id = 0u32;
    // SAFETY: valid name slice; the host writes one u32.
    match unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) } {
        Status::Ok => Some(id),
        _ => None,
    }
}

pub fn increment_metric(id: u32, by: i64) {
    // SAFETY: plain values.
    let _ = unsafe { proxy_increment_metric(id, by) };
}

pub fn record_metric(id: u32, value: u64) {
    // SAFETY: plain values.
    let _ = unsafe { proxy_record_metric(id, value) };
}

/// Resumes the paused request of stream `context_id` from the callback of
/// another stream of this VM, then makes `current` the effective stream
/// again for the host calls that follow. Envoy runs the resumed stream only
/// after the current callback returns (its `continueStream` defers the call
/// while the VM is busy), so this never re-enters the filter.
pub fn resume_request_of(context_id: u32, current: u32) -> bool {
    // SAFETY: plain values.
    let resumed = unsafe {
        matches!(proxy_set_effective_context(context_id), Status::Ok)
            && matches!(proxy_continue_stream(StreamType::HttpRequest), Status::Ok)
    };
    // SAFETY: plain value.
    let _ = unsafe { proxy_set_effective_context(current) };
    resumed
}
