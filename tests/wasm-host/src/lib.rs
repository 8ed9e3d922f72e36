//! A small proxy-wasm host on wasmtime that runs the real
//! `meshtune_filter.wasm` the way Envoy does (ABI 0.2.1 calls in both
//! directions), with a virtual clock, scripted headers and properties, and
//! captured local replies, HTTP calls and metrics, so control loops are
//! tested deterministically and fast. Imports the filter makes that are not
//! modelled here answer `Unimplemented` and are recorded.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use wasmtime::Result;
use wasmtime::{Caller, Engine, Extern, Instance, Linker, Memory, Module, Store, TypedFunc, Val};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::WasiCtxBuilder;

/// proxy-wasm status codes.
const OK: i32 = 0;
const NOT_FOUND: i32 = 1;
const BAD_ARGUMENT: i32 = 2;
const UNIMPLEMENTED: i32 = 12;

/// proxy-wasm map and buffer types.
pub const REQUEST_HEADERS: i32 = 0;
pub const RESPONSE_HEADERS: i32 = 2;
pub const HTTP_CALL_RESPONSE_HEADERS: i32 = 6;
const BUFFER_HTTP_CALL_RESPONSE_BODY: i32 = 4;
const BUFFER_PLUGIN_CONFIGURATION: i32 = 7;

pub type Headers = Vec<(String, String)>;

#[derive(Debug, Clone, PartialEq)]
pub struct LocalResponse {
    pub context: u32,
    pub status: u32,
    pub body: String,
    pub headers: Headers,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpCall {
    pub token: u32,
    pub cluster: String,
    pub headers: Headers,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    pub kind: i32,
    pub value: i64,
}

pub struct HostState {
    wasi: WasiP1Ctx,
    pub now_ns: u64,
    pub plugin_config: Vec<u8>,
    pub maps: HashMap<i32, Headers>,
    pub http_call_body: Vec<u8>,
    /// Properties by path segments joined with `.` (e.g. `xds.cluster_name`).
    pub properties: HashMap<String, Vec<u8>>,
    pub local_responses: Vec<LocalResponse>,
    /// The proxy's shared data, one map per Envoy process: hosts that stand
    /// for worker VMs of one sidecar share it (`Host::share_data_with`).
    pub shared_data: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    pub http_calls: Vec<HttpCall>,
    pub metrics: Vec<Metric>,
    pub logs: Vec<(i32, String)>,
    pub tick_ms: u32,
    pub unimplemented: Vec<String>,
    /// Streams whose paused request the filter resumed, in order.
    pub resumed_requests: Vec<u32>,
    current: u32,
    next_token: u32,
}

fn memory(caller: &mut Caller<'_, HostState>) -> Result<Memory> {
    match caller.get_export("memory") {
        Some(Extern::Memory(m)) => Ok(m),
        _ => Err(wasmtime::Error::msg("the module exports no memory")),
    }
}

fn read(caller: &mut Caller<'_, HostState>, ptr: i32, len: i32) -> Result<Vec<u8>> {
    let mem = memory(caller)?;
    let mut buf = vec![0u8; len.max(0) as usize];
    mem.read(&caller, ptr as u32 as usize, &mut buf)?;
    Ok(buf)
}

fn write_u32(caller: &mut Caller<'_, HostState>, ptr: i32, v: u32) -> Result<()> {
    let mem = memory(caller)?;
    mem.write(caller, ptr as u32 as usize, &v.to_le_bytes())?;
    Ok(())
}

/// Copies `data` into the VM through its allocator and stores the pointer
/// and size where the VM asked, as Envoy does.
fn give(
    caller: &mut Caller<'_, HostState>,
    data: &[u8],
    ret_ptr: i32,
    ret_size: i32,
) -> Result<i32> {
    let alloc = caller
        .get_export("proxy_on_memory_allocate")
        .and_then(|e| e.into_func())
        .ok_or_else(|| wasmtime::Error::msg("no proxy_on_memory_allocate"))?
        .typed::<i32, i32>(&caller)?;
    let ptr = alloc.call(&mut *caller, data.len() as i32)?;
    let mem = memory(caller)?;
    mem.write(&mut *caller, ptr as u32 as usize, data)?;
    write_u32(caller, ret_ptr, ptr as u32)?;
    write_u32(caller, ret_size, data.len() as u32)?;
    Ok(OK)
}

/// The ABI's map encoding (shared with the filter's own decoder).
fn serialize(map: &Headers) -> Vec<u8> {
    let pairs: Vec<(&str, &str)> = map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    meshtune_filter_core::abi::serialize_pairs(&pairs)
}

fn deserialize(buf: &[u8]) -> Headers {
    meshtune_filter_core::abi::parse_pairs(buf)
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect()
}

fn text(b: Vec<u8>) -> String {
    String::from_utf8_lossy(&b).into_owned()
}

/// The host functions modelled here.
const HOST_FUNCS: [&str; 18] = [
    "proxy_log",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_buffer_bytes",
    "proxy_get_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_add_header_map_value",
    "proxy_get_property",
    "proxy_send_local_response",
    "proxy_http_call",
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_set_effective_context",
    "proxy_continue_stream",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
];

fn define_host(linker: &mut Linker<HostState>) -> Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: Caller<'_, HostState>, level: i32, p: i32, l: i32| -> Result<i32> {
            let msg = text(read(&mut c, p, l)?);
            c.data_mut().logs.push((level, msg));
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: Caller<'_, HostState>, ret: i32| -> Result<i32> {
            let now = c.data().now_ns;
            let mem = memory(&mut c)?;
            mem.write(&mut c, ret as u32 as usize, &now.to_le_bytes())?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: Caller<'_, HostState>, ms: i32| -> i32 {
            c.data_mut().tick_ms = ms as u32;
            OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Caller<'_, HostState>,
         kind: i32,
         start: i32,
         max: i32,
         rp: i32,
         rs: i32|
         -> Result<i32> {
            let data = match kind {
                BUFFER_PLUGIN_CONFIGURATION => c.data().plugin_config.clone(),
                BUFFER_HTTP_CALL_RESPONSE_BODY => c.data().http_call_body.clone(),
                _ => return Ok(NOT_FOUND),
            };
            // Offsets are wasm32 `usize`: read them unsigned (`usize::MAX` means all).
            let start = (start as u32 as usize).min(data.len());
            let end = start.saturating_add(max as u32 as usize).min(data.len());
            give(&mut c, &data[start..end], rp, rs)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Caller<'_, HostState>, kind: i32, rp: i32, rs: i32| -> Result<i32> {
            let data = serialize(c.data().maps.get(&kind).unwrap_or(&Vec::new()));
            give(&mut c, &data, rp, rs)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Caller<'_, HostState>,
         kind: i32,
         kp: i32,
         kl: i32,
         rp: i32,
         rs: i32|
         -> Result<i32> {
            let key = text(read(&mut c, kp, kl)?);
            let found = c
                .data()
                .maps
                .get(&kind)
                .and_then(|m| m.iter().find(|(k, _)| *k == key))
                .map(|(_, v)| v.clone());
            match found {
                Some(v) => give(&mut c, v.as_bytes(), rp, rs),
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    // Replace drops the key first; add appends, as Envoy does (a key
    // already present then stands twice).
    for (name, replace) in [
        ("proxy_replace_header_map_value", true),
        ("proxy_add_header_map_value", false),
    ] {
        linker.func_wrap(
            "env",
            name,
            move |mut c: Caller<'_, HostState>,
                  kind: i32,
                  kp: i32,
                  kl: i32,
                  vp: i32,
                  vl: i32|
                  -> Result<i32> {
                let (k, v) = (text(read(&mut c, kp, kl)?), text(read(&mut c, vp, vl)?));
                let map = c.data_mut().maps.entry(kind).or_default();
                if replace {
                    map.retain(|(kk, _)| *kk != k);
                }
                map.push((k, v));
                Ok(OK)
            },
        )?;
    }
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Caller<'_, HostState>, pp: i32, pl: i32, rp: i32, rs: i32| -> Result<i32> {
            let path = text(read(&mut c, pp, pl)?).replace('\0', ".");
            match c.data().properties.get(&path).cloned() {
                Some(v) => give(&mut c, &v, rp, rs),
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Caller<'_, HostState>,
         kp: i32,
         kl: i32,
         rp: i32,
         rs: i32,
         cas: i32|
         -> Result<i32> {
            let key = text(read(&mut c, kp, kl)?);
            let value = c
                .data()
                .shared_data
                .lock()
                .map_err(|_| wasmtime::Error::msg("shared data poisoned"))?
                .get(&key)
                .cloned();
            match value {
                Some(v) => {
                    write_u32(&mut c, cas, 1)?;
                    give(&mut c, &v, rp, rs)
                }
                None => Ok(NOT_FOUND),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Caller<'_, HostState>,
         kp: i32,
         kl: i32,
         vp: i32,
         vl: i32,
         _cas: i32|
         -> Result<i32> {
            let key = text(read(&mut c, kp, kl)?);
            let value = read(&mut c, vp, vl)?;
            c.data()
                .shared_data
                .lock()
                .map_err(|_| wasmtime::Error::msg("shared data poisoned"))?
                .insert(key, value);
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Caller<'_, HostState>,
         status: i32,
         _dp: i32,
         _dl: i32,
         bp: i32,
         bl: i32,
         hp: i32,
         hl: i32,
         _grpc: i32|
         -> Result<i32> {
            let body = text(read(&mut c, bp, bl)?);
            let headers = deserialize(&read(&mut c, hp, hl)?);
            let context = c.data().current;
            c.data_mut().local_responses.push(LocalResponse {
                context,
                status: status as u32,
                body,
                headers,
            });
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: Caller<'_, HostState>,
         up: i32,
         ul: i32,
         hp: i32,
         hl: i32,
         bp: i32,
         bl: i32,
         _tp: i32,
         _tl: i32,
         _timeout: i32,
         token_ptr: i32|
         -> Result<i32> {
            let cluster = text(read(&mut c, up, ul)?);
            if cluster.is_empty() {
                return Ok(BAD_ARGUMENT);
            }
            let headers = deserialize(&read(&mut c, hp, hl)?);
            let body = read(&mut c, bp, bl)?;
            c.data_mut().next_token += 1;
            let token = c.data().next_token;
            c.data_mut().http_calls.push(HttpCall {
                token,
                cluster,
                headers,
                body,
            });
            write_u32(&mut c, token_ptr, token)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: Caller<'_, HostState>, kind: i32, np: i32, nl: i32, rp: i32| -> Result<i32> {
            let name = text(read(&mut c, np, nl)?);
            let id = match c.data().metrics.iter().position(|m| m.name == name) {
                Some(i) => i,
                None => {
                    c.data_mut().metrics.push(Metric {
                        name,
                        kind,
                        value: 0,
                    });
                    c.data().metrics.len() - 1
                }
            };
            write_u32(&mut c, rp, id as u32)?;
            Ok(OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |mut c: Caller<'_, HostState>, id: i32, by: i64| -> i32 {
            match c.data_mut().metrics.get_mut(id as usize) {
                Some(m) => {
                    m.value += by;
                    OK
                }
                None => NOT_FOUND,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |mut c: Caller<'_, HostState>, id: i32, v: i64| -> i32 {
            match c.data_mut().metrics.get_mut(id as usize) {
                // Gauges hold the value; histograms keep the last sample here.
                Some(m) => {
                    m.value = v;
                    OK
                }
                None => NOT_FOUND,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: Caller<'_, HostState>, ctx: i32| -> i32 {
            c.data_mut().current = ctx as u32;
            OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: Caller<'_, HostState>, stream: i32| -> i32 {
            // Request streams only (0); Envoy runs the stream on after the
            // callback returns, which a test does by calling `respond`.
            if stream != 0 {
                return UNIMPLEMENTED;
            }
            let ctx = c.data().current;
            c.data_mut().resumed_requests.push(ctx);
            OK
        },
    )?;
    Ok(())
}

/// The filter running in one VM.
pub struct Host {
    store: Store<HostState>,
    instance: Instance,
    root: u32,
    next_context: u32,
}

impl Host {
    /// Loads the module and configures its root context with `config`;
    /// returns whether `proxy_on_configure` succeeded.
    pub fn load(wasm: &Path, config: &[u8]) -> Result<(Host, bool)> {
        // Compiling the module is the slow part: once per file and process.
        static COMPILED: Mutex<Vec<(std::path::PathBuf, Engine, Module)>> = Mutex::new(Vec::new());
        let (engine, module) = {
            let mut cache = COMPILED
                .lock()
                .map_err(|_| wasmtime::Error::msg("module cache poisoned"))?;
            match cache.iter().find(|(p, _, _)| p == wasm) {
                Some((_, e, m)) => (e.clone(), m.clone()),
                None => {
                    // Fuel counts the wasm operators executed: a deterministic
                    // measure of the filter's own work (host calls excluded).
                    let mut config = wasmtime::Config::new();
                    config.consume_fuel(true);
                    let engine = Engine::new(&config)?;
                    let module = Module::from_file(&engine, wasm)?;
                    cache.push((wasm.to_path_buf(), engine.clone(), module.clone()));
                    (engine, module)
                }
            }
        };
        let mut linker: Linker<HostState> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut HostState| &mut s.wasi)?;
        define_host(&mut linker)?;
        // Everything else the module imports from the host answers Unimplemented.
        let mut stubbed: Vec<String> = Vec::new();
        for import in module.imports() {
            let name = import.name().to_string();
            if import.module() != "env"
                || HOST_FUNCS.contains(&name.as_str())
                || stubbed.contains(&name)
            {
                continue;
            }
            if let wasmtime::ExternType::Func(ty) = import.ty() {
                let n = name.clone();
                linker.func_new("env", &name, ty.clone(), move |mut c, _params, results| {
                    c.data_mut().unimplemented.push(n.clone());
                    if let Some(r) = results.first_mut() {
                        *r = Val::I32(UNIMPLEMENTED);
                    }
                    Ok(())
                })?;
                stubbed.push(name);
            }
        }
        let mut store = Store::new(&engine, dummy_state());
        store.set_fuel(u64::MAX)?;
        store.data_mut().plugin_config = config.to_vec();
        store.data_mut().now_ns = 1_800_000_000_000_000_000;
        let instance = linker.instantiate(&mut store, &module)?;
        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
            init.call(&mut store, ())?;
        }
        let mut host = Host {
            store,
            instance,
            root: 1,
            next_context: 2,
        };
        host.call2("proxy_on_context_create", 1, 0)?;
        host.store.data_mut().current = 1;
        let started = host
            .func::<(i32, i32), i32>("proxy_on_vm_start")?
            .call(&mut host.store, (1, 0))?;
        let configured = host
            .func::<(i32, i32), i32>("proxy_on_configure")?
            .call(&mut host.store, (1, config.len() as i32))?;
        Ok((host, started == 1 && configured == 1))
    }

    fn func<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
        &mut self,
        name: &str,
    ) -> Result<TypedFunc<P, R>> {
        self.instance.get_typed_func::<P, R>(&mut self.store, name)
    }

    fn call2(&mut self, name: &str, a: i32, b: i32) -> Result<()> {
        self.func::<(i32, i32), ()>(name)?
            .call(&mut self.store, (a, b))?;
        Ok(())
    }

    /// Wasm operators executed so far (fuel consumed).
    pub fn wasm_ops(&self) -> u64 {
        u64::MAX - self.store.get_fuel().unwrap_or(u64::MAX)
    }

    pub fn state(&self) -> &HostState {
        self.store.data()
    }

    pub fn state_mut(&mut self) -> &mut HostState {
        self.store.data_mut()
    }

    /// Moves the virtual clock.
    pub fn advance_ms(&mut self, ms: u64) {
        self.store.data_mut().now_ns += ms * 1_000_000;
    }

    pub fn now_ms(&self) -> u64 {
        self.store.data().now_ns / 1_000_000
    }

    pub fn tick(&mut self) -> Result<()> {
        self.store.data_mut().current = self.root;
        self.func::<i32, ()>("proxy_on_tick")?
            .call(&mut self.store, self.root as i32)?;
        Ok(())
    }

    /// Delivers the agent's answer to HTTP call `token`.
    pub fn http_call_response(&mut self, token: u32, status: u16, body: &[u8]) -> Result<()> {
        self.store.data_mut().maps.insert(
            HTTP_CALL_RESPONSE_HEADERS,
            vec![(":status".into(), status.to_string())],
        );
        self.store.data_mut().http_call_body = body.to_vec();
        self.store.data_mut().current = self.root;
        self.func::<(i32, i32, i32, i32, i32), ()>("proxy_on_http_call_response")?
            .call(
                &mut self.store,
                (self.root as i32, token as i32, 1, body.len() as i32, 0),
            )?;
        Ok(())
    }

    /// Starts a stream with its request headers; returns the stream, the
    /// action (0 continue, 1 pause) and the headers as the filter left them.
    pub fn request(&mut self, headers: &[(&str, &str)]) -> Result<(u32, i32, Headers)> {
        let ctx = self.next_context;
        self.next_context += 1;
        self.call2("proxy_on_context_create", ctx as i32, self.root as i32)?;
        let map: Headers = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let n = map.len() as i32;
        self.store.data_mut().maps.insert(REQUEST_HEADERS, map);
        self.store.data_mut().current = ctx;
        let action = self
            .func::<(i32, i32, i32), i32>("proxy_on_request_headers")?
            .call(&mut self.store, (ctx as i32, n, 1))?;
        let after = self
            .store
            .data()
            .maps
            .get(&REQUEST_HEADERS)
            .cloned()
            .unwrap_or_default();
        Ok((ctx, action, after))
    }

    /// Finishes stream `ctx` with a response of `status` (headers then a
    /// body ending the stream), then logs and deletes it.
    pub fn respond(&mut self, ctx: u32, status: u16, extra: &[(&str, &str)]) -> Result<()> {
        let mut map: Headers = vec![(":status".into(), status.to_string())];
        map.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let n = map.len() as i32;
        self.store.data_mut().maps.insert(RESPONSE_HEADERS, map);
        self.store.data_mut().current = ctx;
        self.func::<(i32, i32, i32), i32>("proxy_on_response_headers")?
            .call(&mut self.store, (ctx as i32, n, 0))?;
        self.func::<(i32, i32, i32), i32>("proxy_on_response_body")?
            .call(&mut self.store, (ctx as i32, 3, 1))?;
        self.end(ctx)
    }

    /// Logs, finishes and deletes stream `ctx` (also for reset streams).
    pub fn end(&mut self, ctx: u32) -> Result<()> {
        self.store.data_mut().current = ctx;
        self.func::<i32, ()>("proxy_on_log")?
            .call(&mut self.store, ctx as i32)?;
        self.func::<i32, i32>("proxy_on_done")?
            .call(&mut self.store, ctx as i32)?;
        self.func::<i32, ()>("proxy_on_delete")?
            .call(&mut self.store, ctx as i32)?;
        Ok(())
    }

    /// Makes this host see `other`'s shared data: two plugins (or worker
    /// VMs) of one Envoy process.
    pub fn share_data_with(&mut self, other: &Host) {
        self.store.data_mut().shared_data = other.state().shared_data.clone();
    }

    /// The response headers of the last `respond`, as the filter left them.
    pub fn response_headers(&self) -> Headers {
        self.state()
            .maps
            .get(&RESPONSE_HEADERS)
            .cloned()
            .unwrap_or_default()
    }

    pub fn metric(&self, name_suffix: &str, contains: &str) -> i64 {
        self.state()
            .metrics
            .iter()
            .filter(|m| m.name.ends_with(name_suffix) && m.name.contains(contains))
            .map(|m| m.value)
            .sum()
    }
}

fn dummy_state() -> HostState {
    HostState {
        wasi: WasiCtxBuilder::new().build_p1(),
        now_ns: 0,
        plugin_config: Vec::new(),
        maps: HashMap::new(),
        http_call_body: Vec::new(),
        properties: HashMap::new(),
        local_responses: Vec::new(),
        shared_data: Arc::default(),
        http_calls: Vec::new(),
        metrics: Vec::new(),
        logs: Vec::new(),
        tick_ms: 0,
        unimplemented: Vec::new(),
        resumed_requests: Vec::new(),
        current: 0,
        next_token: 0,
    }
}
