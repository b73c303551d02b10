//! The JS-facing API (wasm-bindgen). The npm package `diffattn` (web/) wraps these raw bindings in
//! the documented JS API; nothing here is meant to be called by users directly.
//!
//! Everything is async and never blocks: GPU work completes through `map_async`, which resolves
//! from the browser's event loop, so neither JSPI nor Asyncify is needed.

mod engine;
mod maps;

use crate::attention::{self, AttentionCall, AttentionConfig, HostInputs, Kernel, Mode};
use crate::error::Error;
use crate::gpu::{Gpu, GpuOptions};
use std::cell::RefCell;
use std::sync::Arc;
use wasm_bindgen::prelude::*;

/// A library error as a JS `Error`: the one-line message, `name` "DiffAttnError" and `kind` the
/// variant name, so that callers can branch without parsing the message.
pub(crate) fn js_error(e: Error) -> JsValue {
    let debug = format!("{e:?}");
    let kind: String = debug
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let err = js_sys::Error::new(&e.to_string());
    err.set_name("DiffAttnError");
    let _ = js_sys::Reflect::set(&err, &"kind".into(), &kind.into());
    err.into()
}

/// Panics abort the module (panic = "abort" in the wasm-release profile); the hook puts the
/// message on the console first, since the trap JS sees carries none.
#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        web_sys::console::error_1(&format!("diffattn panicked: {info}").into());
    }));
}

thread_local! {
    // One device per wasm instance (per page or worker): opening a device is slow, and every
    // kernel call and model can share it.
    static GPU: RefCell<Option<Arc<Gpu>>> = const { RefCell::new(None) };
}

/// The shared device, opened on first use, and opened again once it has been lost (destroyed,
/// a driver reset): models on the lost device fail with `DeviceLost`, and a model loaded again
/// gets the new device.
pub(crate) async fn gpu() -> Result<Arc<Gpu>, JsValue> {
    if let Some(g) = GPU.with(|g| g.borrow().clone()) {
        if g.lost_error().is_none() {
            return Ok(g);
        }
        GPU.with(|slot| {
            // Another caller may have replaced it already.
            let mut slot = slot.borrow_mut();
            if slot.as_ref().is_some_and(|cur| Arc::ptr_eq(cur, &g)) {
                *slot = None;
            }
        });
    }
    // The model API takes Arc<Gpu>; on wasm (one thread) it is never shared across threads.
    #[allow(clippy::arc_with_non_send_sync)]
    let opened = Arc::new(Gpu::new(&GpuOptions::default()).await.map_err(js_error)?);
    // Two callers may have raced through the await: keep the first device so that buffers and
    // pipelines are never shared across devices.
    Ok(GPU.with(|g| {
        let mut slot = g.borrow_mut();
        match slot.as_ref() {
            Some(cur) if cur.lost_error().is_none() => cur.clone(),
            _ => slot.insert(opened).clone(),
        }
    }))
}

/// What the page shows about the device: adapter, the path in use and the limits that matter.
#[wasm_bindgen(js_name = gpuInfo)]
pub async fn gpu_info() -> Result<JsValue, JsValue> {
    let g = gpu().await?;
    Ok(gpu_info_value(&g))
}

pub(crate) fn gpu_info_value(g: &Gpu) -> JsValue {
    let info = serde_json::json!({
        "adapter": g.info.name,
        "backend": format!("{:?}", g.info.backend),
        "deviceType": format!("{:?}", g.info.device_type),
        "driver": g.info.driver,
        "description": g.describe(),
        "features": {
            "shaderF16": g.has_f16(),
            "subgroups": g.has_subgroups(),
            "timestampQuery": g.has_timestamps(),
        },
        "limits": {
            "maxStorageBufferBindingSize": g.limits.max_storage_buffer_binding_size,
            "maxBufferSize": g.limits.max_buffer_size,
            "maxComputeWorkgroupStorageSize": g.limits.max_compute_workgroup_storage_size,
            "maxComputeInvocationsPerWorkgroup": g.limits.max_compute_invocations_per_workgroup,
            "maxComputeWorkgroupsPerDimension": g.limits.max_compute_workgroups_per_dimension,
        },
    });
    json_to_js(&info)
}

/// JSON values cross as parsed JS objects; small and rare, so the text round trip is fine.
pub(crate) fn json_to_js(v: &serde_json::Value) -> JsValue {
    js_sys::JSON::parse(&v.to_string()).unwrap_or(JsValue::NULL)
}

/// One DIFF V2 (or standard) attention call on host arrays, in the Rust API's layouts:
/// q (N, 2h, d) (or (N, h, d) when `standard`), k and v (S, h_kv, d), lam (N, h) (pre-sigmoid
/// logits, ignored when `standard`); returns out (N, h, d). N and S follow from the lengths.
#[wasm_bindgen(js_name = diffAttentionRaw)]
#[allow(clippy::too_many_arguments)]
pub async fn diff_attention(
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    lam: Vec<f32>,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    causal: bool,
    past_len: u32,
    standard: bool,
) -> Result<Vec<f32>, JsValue> {
    let mode = if standard { Mode::Standard } else { Mode::Diff };
    let cfg = AttentionConfig::new(mode, heads, kv_heads, head_dim);
    cfg.validate().map_err(js_error)?;
    let q_row = (cfg.q_heads() * head_dim) as usize;
    let kv_row = (kv_heads * head_dim) as usize;
    let rows = |name: &str, len: usize, row: usize, what: &str| {
        if len == 0 || !len.is_multiple_of(row) {
            return Err(js_error(Error::Shape {
                tensor: name.into(),
                expected: format!("a non-empty multiple of {row} values ({what})"),
                got: format!("{len} values"),
            }));
        }
        Ok((len / row) as u32)
    };
    let heads_desc = if standard { "h*d" } else { "2h*d" };
    let n_queries = rows("q", q.len(), q_row, heads_desc)?;
    let seq_len = rows("k", k.len(), kv_row, "h_kv*d")?;
    let call = AttentionCall {
        n_queries,
        seq_len,
        causal,
        past_len,
    };
    let g = gpu().await?;
    let inputs = HostInputs {
        q: &q,
        k: &k,
        v: &v,
        lam: &lam,
    };
    attention::attention(&g, &cfg, &call, &inputs, Kernel::Auto)
        .await
        .map_err(js_error)
}
